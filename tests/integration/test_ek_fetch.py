"""Certificates the server fetches itself, through the real plugin processes and swtpm,
from a loopback HTTPS server of the test's own: issuers by AIA (`ek_aia_fetch`) and EK
certificates from a manufacturer's service (`ek_cert_download`)."""

from __future__ import annotations

import base64
import json
import threading
import time
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


def aia_node(
    agent: PluginProcess, swtpm: SWTPM, issuer: TestCA, url: str, web: DocumentServer, body: bytes
) -> str:
    """Puts in NV an EK certificate by `issuer` whose caIssuers URL is `url`, has `web`
    serve `body` and the agent use the TPM. Returns the EK hash."""
    key = ek_public_key(swtpm.tcti)
    certificate = issuer.issue_ek_certificate(key, ca_issuers_url=url)
    write_ek_certificate_nv(swtpm.tcti, RSA_CERT_INDEX, der(certificate))
    web.body = body
    agent.configure(hcl(tcti=swtpm.tcti))
    return ek_hash(key)


def configure_aia_server(
    server: PluginProcess, ek_ca: TestCA, tls: TLSFiles, cache: Path, **options: object
) -> None:
    """The root alone in ek_ca_path, and ek_aia_fetch from 127.0.0.1."""
    server.configure(
        hcl(ek_ca_path=str(ek_ca.root_path)) + "\n" + aia_options(tls, cache, **options)
    )


@pytest.fixture
def genuine_aia_node(
    agent: PluginProcess, bare_swtpm: SWTPM, ek_ca: TestCA, web: DocumentServer
) -> str:
    """An EK certificate in NV whose issuer is published at the web server (by AIA) only.
    Returns its EK hash."""
    url = f"{origin(web)}/ek-ca.cer"
    return aia_node(agent, bare_swtpm, ek_ca, url, web, der(ek_ca.intermediate_certificate))


def test_aia_completes_the_chain_and_is_cached(
    server: PluginProcess,
    agent: PluginProcess,
    genuine_aia_node: str,
    ek_ca: TestCA,
    tls: TLSFiles,
    web: DocumentServer,
    tmp_path: Path,
) -> None:
    # Without the option the root alone does not verify the EK certificate.
    server.configure(hcl(ek_ca_path=str(ek_ca.root_path)))
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "does not chain")
    assert web.paths == []

    configure_aia_server(server, ek_ca, tls, tmp_path / "aia")
    assert relay_attestation(agent, server).spiffe_id.endswith(f"/tpm/{genuine_aia_node}")
    assert web.paths == ["/ek-ca.cer"]
    # Cached on disk by URL: the next attestation, even with the service gone, needs no fetch.
    web.stop()
    assert relay_attestation(agent, server).spiffe_id.endswith(f"/tpm/{genuine_aia_node}")
    assert web.paths == ["/ek-ca.cer"]


@pytest.mark.parametrize("form", ["pem", "pkcs7-der", "pkcs7-pem"])
def test_aia_answer_forms(
    server: PluginProcess,
    agent: PluginProcess,
    genuine_aia_node: str,
    ek_ca: TestCA,
    tls: TLSFiles,
    web: DocumentServer,
    tmp_path: Path,
    form: str,
) -> None:
    intermediate = ek_ca.intermediate_certificate
    web.body = {
        "pem": intermediate.public_bytes(Encoding.PEM),
        "pkcs7-der": pkcs7.serialize_certificates([intermediate], Encoding.DER),
        "pkcs7-pem": pkcs7.serialize_certificates([intermediate], Encoding.PEM),
    }[form]
    configure_aia_server(server, ek_ca, tls, tmp_path / "aia")
    assert relay_attestation(agent, server).spiffe_id.endswith(f"/tpm/{genuine_aia_node}")


def test_aia_certificates_are_never_anchors(
    server: PluginProcess,
    agent: PluginProcess,
    bare_swtpm: SWTPM,
    ek_ca: TestCA,
    tls: TLSFiles,
    web: DocumentServer,
    tmp_path: Path,
) -> None:
    # A forger's EK certificate whose AIA serves the forger's intermediate and root.
    rogue = TestCA.create(tmp_path / "rogue", name="Rogue TPM")
    chain = [rogue.intermediate_certificate, rogue.root_certificate]
    url = f"{origin(web)}/rogue.p7c"
    aia_node(agent, bare_swtpm, rogue, url, web, pkcs7.serialize_certificates(chain, Encoding.DER))
    configure_aia_server(server, ek_ca, tls, tmp_path / "aia")
    audit = expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "does not chain")
    assert audit["check"] == "ek_cert_chain"
    assert web.paths == ["/rogue.p7c"]


def test_aia_host_not_allowed_is_never_contacted(
    server: PluginProcess,
    agent: PluginProcess,
    bare_swtpm: SWTPM,
    ek_ca: TestCA,
    tls: TLSFiles,
    web: DocumentServer,
    tmp_path: Path,
) -> None:
    # "localhost" reaches the same server, but only 127.0.0.1 is allowed.
    url = f"{origin(web, 'localhost')}/ek-ca.cer"
    aia_node(agent, bare_swtpm, ek_ca, url, web, der(ek_ca.intermediate_certificate))
    configure_aia_server(server, ek_ca, tls, tmp_path / "aia")
    audit = expect_rejection(
        agent, server, grpc.StatusCode.PERMISSION_DENIED, "not on a host in ek_aia_fetch"
    )
    assert audit["check"] == "ek_aia_fetch"
    assert web.paths == []


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
    server: PluginProcess,
    agent: PluginProcess,
    genuine_aia_node: str,
    ek_ca: TestCA,
    tls: TLSFiles,
    web: DocumentServer,
    tmp_path: Path,
    trouble: str,
    options: dict[str, object],
    words: str,
) -> None:
    if trouble == "down":
        web.stop()
    elif trouble == "slow":
        web.delay = 2
    elif trouble == "server error":
        web.status = 503
    configure_aia_server(server, ek_ca, tls, tmp_path / "aia", **options)
    audit = expect_rejection(agent, server, grpc.StatusCode.UNAVAILABLE, words)
    assert (audit["check"], audit["ek_hash"]) == ("ek_aia_fetch", genuine_aia_node)


def test_a_slow_certificate_service_stalls_no_other_stream(
    server: PluginProcess,
    agent: PluginProcess,
    genuine_aia_node: str,
    ek_ca: TestCA,
    tls: TLSFiles,
    web: DocumentServer,
    tmp_path: Path,
) -> None:
    """The fetch waits off the server's event loop: while one stream waits on a service
    that has not answered, another stream is served, and then the first completes. (Were
    the loop blocked, the other stream would be answered only once the fetch had timed
    out, and the first attestation would fail.)"""
    web.hold = threading.Event()
    configure_aia_server(server, ek_ca, tls, tmp_path / "aia", timeout="10s")
    results: list[str] = []
    slow = threading.Thread(
        target=lambda: results.append(relay_attestation(agent, server).spiffe_id), daemon=True
    )
    slow.start()
    deadline = time.monotonic() + 20
    while not web.paths and time.monotonic() < deadline:
        time.sleep(0.01)
    assert web.paths == ["/ek-ca.cer"], "the slow attestation never reached the service"

    other = ServerConversation(server)
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
def download_node(agent: PluginProcess, bare_swtpm: SWTPM) -> EKKey:
    """A TPM with no EK certificate in NV (as Intel PTT and AMD fTPM ship): its EK key."""
    agent.configure(hcl(tcti=bare_swtpm.tcti))
    return ek_public_key(bare_swtpm.tcti)


@pytest.mark.parametrize("manufacturer", ["intel", "amd"])
def test_downloaded_certificate_attests_and_is_cached(
    server: PluginProcess,
    agent: PluginProcess,
    download_node: EKKey,
    ek_ca: TestCA,
    tls: TLSFiles,
    web: DocumentServer,
    tmp_path: Path,
    manufacturer: str,
) -> None:
    certificate = ek_ca.issue_ek_certificate(download_node)
    web.body = intel_answer(certificate) if manufacturer == "intel" else der(certificate)
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "sent no EK certificate")

    cache = tmp_path / "ek-certs"
    server.configure(
        hcl(ek_ca_path=str(ek_ca.bundle_path))
        + "\n"
        + download_options(web, tls, cache, manufacturer)
    )
    pub_hash = ek_hash(download_node)
    result = relay_attestation(agent, server)
    assert result.spiffe_id.endswith(f"/tpm/{pub_hash}")
    assert "ek:model:swtpm" in result.selectors  # facts from the downloaded certificate
    expected = (
        f"/ekcertservice/{intel_ek_path(download_node)}"
        if manufacturer == "intel"
        else f"/pki/aia/{amd_ek_path(download_node)}"
    )
    assert web.paths == [expected]
    assert (cache / f"{pub_hash}.der").read_bytes() == der(certificate)
    # Offline: the cached certificate is used (and verified again).
    web.stop()
    assert relay_attestation(agent, server).spiffe_id.endswith(f"/tpm/{pub_hash}")


@pytest.mark.parametrize(
    ("wrong", "words", "check"),
    [
        ("another key", "EK certificate key differs from the EK public area", "ek_cert_key"),
        ("another CA", "does not chain to ek_ca_path", "ek_cert_chain"),
        ("not a certificate", "serves no usable certificate", "ek_cert_download"),
    ],
)
def test_wrong_downloaded_certificate_is_denied(
    server: PluginProcess,
    agent: PluginProcess,
    download_node: EKKey,
    ek_ca: TestCA,
    tls: TLSFiles,
    web: DocumentServer,
    tmp_path: Path,
    wrong: str,
    words: str,
    check: str,
) -> None:
    if wrong == "another key":
        other = rsa.generate_private_key(65537, 2048).public_key()
        web.body = intel_answer(ek_ca.issue_ek_certificate(other))
    elif wrong == "another CA":
        rogue = TestCA.create(tmp_path / "rogue", name="Rogue TPM")
        web.body = intel_answer(rogue.issue_ek_certificate(download_node))
    else:
        web.body = b'{"certificate": "bm90IGEgY2VydGlmaWNhdGU"}'
    cache = tmp_path / "ek-certs"
    server.configure(
        hcl(ek_ca_path=str(ek_ca.bundle_path)) + "\n" + download_options(web, tls, cache)
    )
    audit = expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, words)
    assert audit["check"] == check
    assert not (cache / f"{ek_hash(download_node)}.der").exists()


@pytest.mark.parametrize(
    ("trouble", "options", "words"),
    [
        ("down", {}, "ConnectError"),
        ("slow", {"timeout": "300ms"}, "no answer within 0.3s"),
        ("oversized", {"max_size": 100}, "larger than max_size (100)"),
    ],
)
def test_download_service_trouble_is_unavailable(
    server: PluginProcess,
    agent: PluginProcess,
    download_node: EKKey,
    ek_ca: TestCA,
    tls: TLSFiles,
    web: DocumentServer,
    tmp_path: Path,
    trouble: str,
    options: dict[str, object],
    words: str,
) -> None:
    web.body = intel_answer(ek_ca.issue_ek_certificate(download_node))
    if trouble == "down":
        web.stop()
    elif trouble == "slow":
        web.delay = 2
    server.configure(
        hcl(ek_ca_path=str(ek_ca.bundle_path))
        + "\n"
        + download_options(web, tls, tmp_path / "ek-certs", **options)
    )
    audit = expect_rejection(agent, server, grpc.StatusCode.UNAVAILABLE, words)
    assert audit["check"] == "ek_cert_download"


def test_not_published_is_remembered_for_negative_cache(
    server: PluginProcess,
    agent: PluginProcess,
    download_node: EKKey,
    ek_ca: TestCA,
    tls: TLSFiles,
    web: DocumentServer,
    tmp_path: Path,
) -> None:
    web.status = 404
    cache = tmp_path / "ek-certs"

    def configure(negative_cache: str) -> None:
        options = download_options(web, tls, cache, negative_cache=negative_cache)
        server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)) + "\n" + options)

    configure("1h")
    for _ in range(2):
        expect_rejection(
            agent, server, grpc.StatusCode.PERMISSION_DENIED, "its manufacturer publishes none"
        )
    assert len(web.paths) == 1  # the second attestation believed the first "not found"
    configure("0s")
    for _ in range(2):
        expect_rejection(
            agent, server, grpc.StatusCode.PERMISSION_DENIED, "its manufacturer publishes none"
        )
    assert len(web.paths) == 3


def test_allowlisted_ek_needs_no_download(
    server: PluginProcess,
    agent: PluginProcess,
    download_node: EKKey,
    ek_ca: TestCA,
    tls: TLSFiles,
    web: DocumentServer,
    tmp_path: Path,
) -> None:
    hashes = tmp_path / "hashes"
    hashes.mkdir()
    (hashes / ek_hash(download_node)).write_text("")
    server.configure(
        hcl(ek_ca_path=str(ek_ca.bundle_path), hash_path=str(hashes))
        + "\n"
        + download_options(web, tls, tmp_path / "ek-certs")
    )
    relay_attestation(agent, server)
    assert web.paths == []


def test_download_host_not_allowed_is_refused_at_configure(
    server: PluginProcess, ek_ca: TestCA, tls: TLSFiles, web: DocumentServer, tmp_path: Path
) -> None:
    options = download_options(web, tls, tmp_path / "ek-certs", allowed_hosts=["ekop.intel.com"])
    error = rpc_error(
        lambda: server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)) + "\n" + options)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an http(s) URL on a host in allowed_hosts" in str(error.details())
    assert web.paths == []
