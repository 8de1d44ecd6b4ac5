"""Certificates the server fetches itself, through the real plugin processes and swtpm,
from a loopback HTTPS server of the test's own: issuers by AIA (`ek_aia_fetch`) and EK
certificates from a manufacturer's service (`ek_cert_download`)."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from spire_tpm_attestor.ek_download import amd_ek_path, intel_ek_path
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.runtime.host import PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM, write_ek_certificate_nv
from spire_tpm_attestor.tpm.constants import EK_TEMPLATES
from spire_tpm_attestor.tpm.structures import parse_tpm2b_public
from tests.integration.http_servers import DocumentServer, TLSFiles
from tests.integration.plugins import ServerConversation, expect_rejection, hcl, rpc_error

tss = pytest.importorskip("tpm2_pytss")

from agent_plugin.tpm import TPMSession  # noqa: E402 - needs tpm2-pytss, checked just above

pytestmark = pytest.mark.swtpm

RSA_CERT_INDEX = next(t.cert_index for t in EK_TEMPLATES if t.tcg_name == "L-1")
EKKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.create(tmp_path_factory.mktemp("fetch-tls"), name="Certificate Service")


@pytest.fixture
def web(tls: TLSFiles) -> DocumentServer:
    server = DocumentServer(tls=tls).start()
    yield server  # type: ignore[misc]
    server.stop()


def block(name: str, body: str) -> str:
    return f"{name} {{\n{body}\n}}"


def origin(web: DocumentServer, host: str = "127.0.0.1") -> str:
    port = web.url.split(":")[2].split("/")[0]
    return f"https://{host}:{port}"


def ek_public_key(tcti: str) -> EKKey:
    with TPMSession(tcti) as tpm:
        key = parse_tpm2b_public(tpm.read_ek("rsa2048").public).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


@dataclass(frozen=True)
class Fetching:
    """What every test here starts from: the plugins, the EK CA, the test's HTTPS
    certificate service (`web`, whose CA is in `tls`), and the test's directory."""

    agent: PluginProcess
    server: PluginProcess
    ek_ca: TestCA
    tls: TLSFiles
    web: DocumentServer
    directory: Path

    @property
    def download_cache(self) -> Path:
        return self.directory / "ek-certs"

    def configure_aia(self, **options: object) -> None:
        """The root alone in ek_ca_path, and ek_aia_fetch from 127.0.0.1."""
        self.server.configure(
            hcl(ek_ca_path=str(self.ek_ca.root_path))
            + "\n"
            + aia_options(self.tls, self.directory / "aia", **options)
        )

    def configure_download(
        self,
        manufacturer: str = "intel",
        server_options: dict[str, object] | None = None,
        **options: object,
    ) -> None:
        """The whole EK CA in ek_ca_path, and ek_cert_download from 127.0.0.1."""
        self.server.configure(
            hcl(ek_ca_path=str(self.ek_ca.bundle_path), **(server_options or {}))
            + "\n"
            + download_options(self.web, self.tls, self.download_cache, manufacturer, **options)
        )

    def attest(self) -> str:
        """The SPIFFE ID of an admitted attestation."""
        return relay_attestation(self.agent, self.server).spiffe_id

    def expect_rejection(self, code: grpc.StatusCode, words: str) -> dict[str, str]:
        return expect_rejection(self.agent, self.server, code, words)


@pytest.fixture
def fetching(
    agent: PluginProcess,
    server: PluginProcess,
    ek_ca: TestCA,
    tls: TLSFiles,
    web: DocumentServer,
    tmp_path: Path,
) -> Fetching:
    return Fetching(agent, server, ek_ca, tls, web, tmp_path)


# -- ek_aia_fetch ---------------------------------------------------------------------


def aia_options(tls: TLSFiles, cache: Path, **options: object) -> str:
    settings = {
        "allowed_hosts": ["127.0.0.1"],
        "ca_path": str(tls.ca),
        "cache_path": str(cache),
        "timeout": "2s",
        **options,
    }
    return block("ek_aia_fetch", hcl(**settings))


def aia_node(fetching: Fetching, swtpm: SWTPM, issuer: TestCA, url: str, body: bytes) -> str:
    """Puts in NV an EK certificate by `issuer` whose caIssuers URL is `url`, has the web
    server serve `body` and the agent use the TPM. Returns the EK hash."""
    key = ek_public_key(swtpm.tcti)
    certificate = issuer.issue_ek_certificate(key, ca_issuers_url=url)
    write_ek_certificate_nv(swtpm.tcti, RSA_CERT_INDEX, der(certificate))
    fetching.web.body = body
    fetching.agent.configure(hcl(tcti=swtpm.tcti))
    return ek_hash(key)


@pytest.fixture
def genuine_aia_node(fetching: Fetching, bare_swtpm: SWTPM) -> str:
    """An EK certificate in NV whose issuer is published at the web server (by AIA) only.
    Returns its EK hash."""
    url = f"{origin(fetching.web)}/ek-ca.cer"
    intermediate = der(fetching.ek_ca.intermediate_certificate)
    return aia_node(fetching, bare_swtpm, fetching.ek_ca, url, intermediate)


def test_aia_completes_the_chain_and_is_cached(fetching: Fetching, genuine_aia_node: str) -> None:
    # Without the option the root alone does not verify the EK certificate.
    fetching.server.configure(hcl(ek_ca_path=str(fetching.ek_ca.root_path)))
    fetching.expect_rejection(grpc.StatusCode.PERMISSION_DENIED, "does not chain")
    assert fetching.web.paths == []

    fetching.configure_aia()
    assert fetching.attest().endswith(f"/tpm/{genuine_aia_node}")
    assert fetching.web.paths == ["/ek-ca.cer"]
    # Cached on disk by URL: the next attestation, even with the service gone, needs no fetch.
    fetching.web.stop()
    assert fetching.attest().endswith(f"/tpm/{genuine_aia_node}")
    assert fetching.web.paths == ["/ek-ca.cer"]


@pytest.mark.parametrize("form", ["pem", "pkcs7-der", "pkcs7-pem"])
def test_aia_answer_forms(fetching: Fetching, genuine_aia_node: str, form: str) -> None:
    intermediate = fetching.ek_ca.intermediate_certificate
    fetching.web.body = {
        "pem": intermediate.public_bytes(Encoding.PEM),
        "pkcs7-der": pkcs7.serialize_certificates([intermediate], Encoding.DER),
        "pkcs7-pem": pkcs7.serialize_certificates([intermediate], Encoding.PEM),
    }[form]
    fetching.configure_aia()
    assert fetching.attest().endswith(f"/tpm/{genuine_aia_node}")


def test_aia_certificates_are_never_anchors(fetching: Fetching, bare_swtpm: SWTPM) -> None:
    # A forger's EK certificate whose AIA serves the forger's intermediate and root.
    rogue = TestCA.create(fetching.directory / "rogue", name="Rogue TPM")
    chain = [rogue.intermediate_certificate, rogue.root_certificate]
    url = f"{origin(fetching.web)}/rogue.p7c"
    aia_node(fetching, bare_swtpm, rogue, url, pkcs7.serialize_certificates(chain, Encoding.DER))
    fetching.configure_aia()
    audit = fetching.expect_rejection(grpc.StatusCode.PERMISSION_DENIED, "does not chain")
    assert audit["check"] == "ek_cert_chain"
    assert fetching.web.paths == ["/rogue.p7c"]


def test_aia_host_not_allowed_is_never_contacted(fetching: Fetching, bare_swtpm: SWTPM) -> None:
    # "localhost" reaches the same server, but only 127.0.0.1 is allowed.
    url = f"{origin(fetching.web, 'localhost')}/ek-ca.cer"
    aia_node(
        fetching, bare_swtpm, fetching.ek_ca, url, der(fetching.ek_ca.intermediate_certificate)
    )
    fetching.configure_aia()
    audit = fetching.expect_rejection(
        grpc.StatusCode.PERMISSION_DENIED, "not on a host in ek_aia_fetch"
    )
    assert audit["check"] == "ek_aia_fetch"
    assert fetching.web.paths == []


def make_trouble(web: DocumentServer, trouble: str) -> None:
    """The certificate service down, slow (2 s), or answering 503."""
    if trouble == "down":
        web.stop()
    elif trouble == "slow":
        web.delay = 2
    elif trouble == "server error":
        web.status = 503


@pytest.mark.parametrize(
    ("trouble", "options", "words"),
    [
        ("down", {}, "ConnectError"),
        ("slow", {"timeout": "300ms"}, "no answer within 0.3s"),
        ("oversized", {"max_size": 100}, "larger than max_size (100)"),
        ("server error", {}, "HTTP status 503"),
    ],
)
def test_aia_service_trouble_is_unavailable(
    fetching: Fetching,
    genuine_aia_node: str,
    trouble: str,
    options: dict[str, object],
    words: str,
) -> None:
    make_trouble(fetching.web, trouble)
    fetching.configure_aia(**options)
    audit = fetching.expect_rejection(grpc.StatusCode.UNAVAILABLE, words)
    assert (audit["check"], audit["ek_hash"]) == ("ek_aia_fetch", genuine_aia_node)


def test_a_slow_certificate_service_stalls_no_other_stream(
    fetching: Fetching, genuine_aia_node: str
) -> None:
    """The fetch waits off the server's event loop: while one stream waits on a service
    that has not answered, another stream is served, and then the first completes. (Were
    the loop blocked, the other stream would be answered only once the fetch had timed
    out, and the first attestation would fail.)"""
    web = fetching.web
    web.hold = threading.Event()
    fetching.configure_aia(timeout="10s")
    results: list[str] = []
    slow = threading.Thread(target=lambda: results.append(fetching.attest()), daemon=True)
    slow.start()
    deadline = time.monotonic() + 20
    while not web.paths and time.monotonic() < deadline:
        time.sleep(0.01)
    assert web.paths == ["/ek-ca.cer"], "the slow attestation never reached the service"

    other = ServerConversation(fetching.server)
    try:
        error = rpc_error(lambda: other.send_payload(b"not a payload"))
    finally:
        other.close()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    web.hold.set()
    slow.join(timeout=30)
    assert results and results[0].endswith(f"/tpm/{genuine_aia_node}")


# -- ek_cert_download -----------------------------------------------------------------


def download_options(
    web: DocumentServer, tls: TLSFiles, cache: Path, manufacturer: str = "intel", **options: object
) -> str:
    base = {"intel": "/ekcertservice/", "amd": "/pki/aia/"}[manufacturer]
    services = block("service_urls", hcl(**{manufacturer: origin(web) + base}))
    settings = {
        "allowed_hosts": ["127.0.0.1"],
        "ca_path": str(tls.ca),
        "cache_path": str(cache),
        "timeout": "2s",
        **options,
    }
    return block("ek_cert_download", services + "\n" + hcl(**settings))


def intel_answer(certificate: x509.Certificate) -> bytes:
    encoded = base64.urlsafe_b64encode(der(certificate)).decode().rstrip("=")
    return json.dumps({"pubhash": "ignored", "certificate": encoded}).encode()


@pytest.fixture
def download_node(fetching: Fetching, bare_swtpm: SWTPM) -> EKKey:
    """A TPM with no EK certificate in NV (as Intel PTT and AMD fTPM ship): its EK key."""
    fetching.agent.configure(hcl(tcti=bare_swtpm.tcti))
    return ek_public_key(bare_swtpm.tcti)


@pytest.mark.parametrize("manufacturer", ["intel", "amd"])
def test_downloaded_certificate_attests_and_is_cached(
    fetching: Fetching, download_node: EKKey, manufacturer: str
) -> None:
    web = fetching.web
    certificate = fetching.ek_ca.issue_ek_certificate(download_node)
    web.body = intel_answer(certificate) if manufacturer == "intel" else der(certificate)
    fetching.server.configure(hcl(ek_ca_path=str(fetching.ek_ca.bundle_path)))
    fetching.expect_rejection(grpc.StatusCode.PERMISSION_DENIED, "sent no EK certificate")

    fetching.configure_download(manufacturer)
    pub_hash = ek_hash(download_node)
    result = relay_attestation(fetching.agent, fetching.server)
    assert result.spiffe_id.endswith(f"/tpm/{pub_hash}")
    assert "ek:model:swtpm" in result.selectors  # facts from the downloaded certificate
    expected = (
        f"/ekcertservice/{intel_ek_path(download_node)}"
        if manufacturer == "intel"
        else f"/pki/aia/{amd_ek_path(download_node)}"
    )
    assert web.paths == [expected]
    assert (fetching.download_cache / f"{pub_hash}.der").read_bytes() == der(certificate)
    # Offline: the cached certificate is used (and verified again).
    web.stop()
    assert fetching.attest().endswith(f"/tpm/{pub_hash}")


@pytest.mark.parametrize(
    ("wrong", "words", "check"),
    [
        ("another key", "EK certificate key differs from the EK public area", "ek_cert_key"),
        ("another CA", "does not chain to ek_ca_path", "ek_cert_chain"),
        ("not a certificate", "serves no usable certificate", "ek_cert_download"),
    ],
)
def test_wrong_downloaded_certificate_is_denied(
    fetching: Fetching, download_node: EKKey, wrong: str, words: str, check: str
) -> None:
    if wrong == "another key":
        other = rsa.generate_private_key(65537, 2048).public_key()
        fetching.web.body = intel_answer(fetching.ek_ca.issue_ek_certificate(other))
    elif wrong == "another CA":
        rogue = TestCA.create(fetching.directory / "rogue", name="Rogue TPM")
        fetching.web.body = intel_answer(rogue.issue_ek_certificate(download_node))
    else:
        fetching.web.body = b'{"certificate": "bm90IGEgY2VydGlmaWNhdGU"}'
    fetching.configure_download()
    audit = fetching.expect_rejection(grpc.StatusCode.PERMISSION_DENIED, words)
    assert audit["check"] == check
    assert not (fetching.download_cache / f"{ek_hash(download_node)}.der").exists()


@pytest.mark.parametrize(
    ("trouble", "options", "words"),
    [
        ("down", {}, "ConnectError"),
        ("slow", {"timeout": "300ms"}, "no answer within 0.3s"),
        ("oversized", {"max_size": 100}, "larger than max_size (100)"),
    ],
)
def test_download_service_trouble_is_unavailable(
    fetching: Fetching,
    download_node: EKKey,
    trouble: str,
    options: dict[str, object],
    words: str,
) -> None:
    fetching.web.body = intel_answer(fetching.ek_ca.issue_ek_certificate(download_node))
    make_trouble(fetching.web, trouble)
    fetching.configure_download(**options)
    audit = fetching.expect_rejection(grpc.StatusCode.UNAVAILABLE, words)
    assert audit["check"] == "ek_cert_download"


def test_not_published_is_remembered_for_negative_cache(
    fetching: Fetching, download_node: EKKey
) -> None:
    fetching.web.status = 404
    fetching.configure_download(negative_cache="1h")
    for _ in range(2):
        fetching.expect_rejection(
            grpc.StatusCode.PERMISSION_DENIED, "its manufacturer publishes none"
        )
    assert len(fetching.web.paths) == 1  # the second attestation believed the first "not found"
    fetching.configure_download(negative_cache="0s")
    for _ in range(2):
        fetching.expect_rejection(
            grpc.StatusCode.PERMISSION_DENIED, "its manufacturer publishes none"
        )
    assert len(fetching.web.paths) == 3


def test_allowlisted_ek_needs_no_download(fetching: Fetching, download_node: EKKey) -> None:
    hashes = fetching.directory / "hashes"
    hashes.mkdir()
    (hashes / ek_hash(download_node)).write_text("")
    fetching.configure_download(server_options={"hash_path": str(hashes)})
    fetching.attest()
    assert fetching.web.paths == []


def test_download_host_not_allowed_is_refused_at_configure(fetching: Fetching) -> None:
    error = rpc_error(lambda: fetching.configure_download(allowed_hosts=["ekop.intel.com"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an http(s) URL on a host in allowed_hosts" in str(error.details())
    assert fetching.web.paths == []
