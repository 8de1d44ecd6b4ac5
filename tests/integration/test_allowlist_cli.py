"""`spire-tpm-attestor allowlist`: round trips through directories, documents and the plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from server_plugin.allowlist import AllowlistEntry
from server_plugin.allowlist.document import parse_document
from server_plugin.allowlist.http import HTTPAllowlist, HTTPSettings
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.runtime.host import PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM, provision_ek_certificates
from tests.integration.http_servers import DocumentServer, Nginx, TLSFiles, free_port
from tests.integration.plugins import expect_rejection, hcl, hcl_block

CLI = str(Path(sys.executable).parent / "spire-tpm-attestor")


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [CLI, "allowlist", *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def ok(*args: str, stdin: bytes = b"") -> list[str]:
    result = cli(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


def spki_pem(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def keys() -> list[ec.EllipticCurvePublicKey]:
    return [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(3)]


def only_entries(directory: Path) -> list[str]:
    """Every file under `directory`, relative: no temporary file is ever left behind."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@pytest.mark.parametrize("layout", ["flat", "bucketed"])
def test_add_list_remove_export_round_trip(
    tmp_path: Path, keys: list[ec.EllipticCurvePublicKey], layout: str
) -> None:
    directory = tmp_path / "allow"
    directory.mkdir()
    where = ["--directory", str(directory), "--layout", layout]
    hashes = [ek_hash(key) for key in keys]
    (tmp_path / "k0.pem").write_bytes(spki_pem(keys[0]))

    assert ok("add", *where, "--name", "n0", "--label", "rack=r1", str(tmp_path / "k0.pem")) == [
        hashes[0]
    ]
    assert ok("add", *where, hashes[1].upper(), stdin=b"") == [hashes[1]]
    assert ok("add", *where, "--label", "role=db", stdin=spki_pem(keys[2])) == [hashes[2]]
    assert ok("list", *where) == sorted(hashes)
    long = dict(
        line.split(" ", 1) if " " in line else (line, "") for line in ok("list", *where, "--long")
    )
    assert json.loads(long[hashes[0]]) == {"name": "n0", "labels": {"rack": "r1"}}
    assert long[hashes[1]] == ""
    expected = sorted(hashes) if layout == "flat" else sorted(f"{h[:2]}/{h}" for h in hashes)
    assert only_entries(directory) == expected

    index = parse_document("".join(ok("export", *where)).encode(), "doc")
    assert index.lookup(hashes[0], "doc") == AllowlistEntry(hashes[0], "n0", {"rack": "r1"}, "doc")
    assert index.lookup(hashes[2], "doc") == AllowlistEntry(hashes[2], None, {"role": "db"}, "doc")
    ok("export", *where, "--output", str(tmp_path / "allowlist.json"))
    assert len(parse_document((tmp_path / "allowlist.json").read_bytes(), "doc")) == 3

    assert ok(
        "remove", *where, stdin=f"# decommissioned\n{hashes[0]}\n\n{hashes[1]}\n".encode()
    ) == [
        hashes[0],
        hashes[1],
    ]
    removed_again = cli("remove", *where, hashes[0])
    assert removed_again.returncode == 0
    assert b"not listed" in removed_again.stderr
    assert ok("list", *where) == [hashes[2]]


def test_stdin_takes_many_certificates_and_public_keys(
    tmp_path: Path, ek_ca: TestCA, keys: list[ec.EllipticCurvePublicKey]
) -> None:
    directory = tmp_path / "allow"
    directory.mkdir()
    certificates = [ek_ca.issue_ek_certificate(key) for key in keys[:2]]
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in certificates) + spki_pem(keys[2])
    added = ok("add", "--directory", str(directory), stdin=pem)
    assert added == [ek_hash(key) for key in keys]
    # A DER certificate file and a file name on stdin work too.
    der = tmp_path / "ek.der"
    der.write_bytes(certificates[0].public_bytes(Encoding.DER))
    assert ok("remove", "--directory", str(directory), stdin=f"{der}\n".encode()) == [added[0]]


@pytest.mark.parametrize(
    ("args", "stdin", "words"),
    [
        (["add", "not-a-hash-nor-a-file"], b"", "not-a-hash-nor-a-file"),
        (["add"], b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n", "PRIVATE"),
        (["add", "--name", "x", "a" * 64, "b" * 64], b"", "--name names one EK"),
        (["add", "--label", "novalue", "a" * 64], b"", "is not KEY=VALUE"),
    ],
)
def test_bad_inputs_are_clear_errors(
    tmp_path: Path, args: list[str], stdin: bytes, words: str
) -> None:
    action, *rest = args
    result = cli(action, "--directory", str(tmp_path), *rest, stdin=stdin)
    assert result.returncode == 2, result
    assert words in result.stderr.decode()
    assert os.listdir(tmp_path) == []


def test_export_names_a_broken_entry(tmp_path: Path) -> None:
    (tmp_path / ("a" * 64)).write_text("{broken")
    result = cli("export", "--directory", str(tmp_path))
    assert result.returncode == 2
    assert "a" * 64 in result.stderr.decode()
    assert "not valid JSON" in result.stderr.decode()


@pytest.mark.swtpm
def test_provisioned_with_the_cli_the_plugin_admits_and_then_refuses(
    agent: PluginProcess, server: PluginProcess, bare_swtpm: SWTPM, ek_ca: TestCA, tmp_path: Path
) -> None:
    certificate: x509.Certificate = provision_ek_certificates(
        bare_swtpm.tcti, ek_ca, algorithms=("ecc256",)
    )["ecc256"]
    (tmp_path / "ek.pem").write_bytes(certificate.public_bytes(Encoding.PEM))
    agent.configure(hcl(tcti=bare_swtpm.tcti))
    racks = tmp_path / "racks"
    racks.mkdir()
    where = ["--directory", str(racks), "--layout", "bucketed"]
    ok("add", *where, "--name", "cli-node", "--label", "rack=r4", str(tmp_path / "ek.pem"))

    server.configure(hcl_block("allowlist", "racks", type="bucketed_directory", path=str(racks)))
    assert {"name:cli-node", "label:rack:r4"} <= set(relay_attestation(agent, server).selectors)

    # The same list, exported and served over HTTP.
    endpoint = DocumentServer(body="\n".join(ok("export", *where)).encode()).start()
    try:
        server.configure(
            hcl_block("allowlist", "inventory", type="http", url=endpoint.url, insecure_http=True)
        )
        assert "name:cli-node" in relay_attestation(agent, server).selectors
    finally:
        endpoint.stop()

    ok("remove", *where, str(tmp_path / "ek.pem"))
    server.configure(hcl_block("allowlist", "racks", type="bucketed_directory", path=str(racks)))
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "not in the allowlist")


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "allowlist"


def test_example_provisioning_script_adds_removes_and_exports(tmp_path: Path) -> None:
    directory = tmp_path / "allowlist"
    directory.mkdir()
    document = tmp_path / "www" / "tpm-allowlist.json"
    document.parent.mkdir()
    environment = {
        **os.environ,
        "ALLOWLIST_DIR": str(directory),
        "DOCUMENT": str(document),
        "PATH": f"{Path(CLI).parent}{os.pathsep}{os.environ['PATH']}",
    }

    def script(*args: str) -> None:
        subprocess.run(
            ["sh", str(EXAMPLES / "provision-node.sh"), *args],
            env=environment,
            capture_output=True,
            check=True,
            timeout=60,
        )

    pub_hash = "ab" * 32
    script("add", pub_hash, "rack 1 node", "rack=r 1", "role=db")
    index = parse_document(document.read_bytes(), "doc")
    assert index.lookup(pub_hash, "doc") == AllowlistEntry(
        pub_hash, "rack 1 node", {"rack": "r 1", "role": "db"}, "doc"
    )
    assert (directory / "ab" / pub_hash).is_file()
    script("remove", pub_hash)
    assert len(parse_document(document.read_bytes(), "doc")) == 0


def test_example_documents_and_bucketed_layout_parse(tmp_path: Path) -> None:
    exported = ok("export", "--directory", str(EXAMPLES / "bucketed"), "--layout", "bucketed")
    assert "\n".join(exported) + "\n" == (EXAMPLES / "allowlist.json").read_text()
    for name in ("allowlist.json", "revoked.json"):
        assert len(parse_document((EXAMPLES / name).read_bytes(), name)) > 0


def test_example_nginx_configuration_serves_the_document(tmp_path: Path) -> None:
    tls = TLSFiles.create(tmp_path / "tls")
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(EXAMPLES / "allowlist.json", root / "tpm-allowlist.json")
    port = free_port()
    example = (EXAMPLES / "nginx-allowlist.conf").read_text()
    for placeholder, value in (
        ("listen 8443", f"listen 127.0.0.1:{port}"),
        ("/etc/nginx/tls/inventory.example.org.pem", str(tls.server_certificate)),
        ("/etc/nginx/tls/inventory.example.org.key", str(tls.server_key)),
        ("/etc/nginx/tls/spire-servers-ca.pem", str(tls.ca)),
        ("/srv/tpm-allowlist", str(root)),
        ("REPLACE-WITH-THE-TOKEN", "s3cret"),
    ):
        assert placeholder in example
        example = example.replace(placeholder, value)
    (tmp_path / "token").write_text("s3cret\n")
    nginx = Nginx(tmp_path / "nginx", root, tls, port=port, server_block=example).start()
    source = HTTPAllowlist(
        'allowlist "inventory"',
        HTTPSettings(
            url=f"{nginx.url}/tpm-allowlist.json",
            ca_path=str(tls.ca),
            client_certificate_path=str(tls.client_certificate),
            client_key_path=str(tls.client_key),
            bearer_token_path=str(tmp_path / "token"),
            refresh_interval=3600,
        ),
    )
    source.start()
    try:
        entry = source.lookup("5f1cfa7fd11c5e3a1ba2a20e4d6f7a9b7c1cb0d2e8a3c5b6f4e2d1c0b9a8f7e6")
        assert entry is not None
        assert entry.name == "rack12-node07"
        assert source.refresh() is True
        assert nginx.statuses(2) == ["200", "304"]
    finally:
        source.close()
        nginx.stop()
