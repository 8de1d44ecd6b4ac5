"""Faults in what `ek_cert_download` depends on, through the real server plugin process
with a real agent and swtpm (a TPM with no EK certificate in NV): a certificate service
that resets, trickles its headers or body, answers 500 or cuts its body short is
`UNAVAILABLE` within `timeout`, never a hang; a cache directory that cannot be created
or a disk that is full leaves attestations working, with one warning."""

from __future__ import annotations

import base64
import json
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.runtime.host import PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from spire_tpm_attestor.tpm.structures import parse_tpm2b_public
from tests.integration.http_servers import DocumentServer, TLSFiles
from tests.integration.plugins import expect_rejection, hcl, log_entries

pytest.importorskip("tpm2_pytss")

from agent_plugin.tpm import TPMSession  # needs tpm2-pytss, checked just above

pytestmark = pytest.mark.swtpm

TIMEOUT = 0.5
NO_HANG = 10.0  # far above TIMEOUT, far below the stream's own 60 s
FAULTS: dict[str, tuple[Callable[[DocumentServer], object], str]] = {
    "reset_in_headers": (
        lambda s: setattr(s, "fault", "reset_in_headers"),
        "Server disconnected without sending a response",
    ),
    "trickle_headers": (lambda s: setattr(s, "fault", "trickle_headers"), "no answer within 0.5s"),
    "trickle": (lambda s: setattr(s, "fault", "trickle"), "no answer within 0.5s"),
    "short_body": (
        lambda s: setattr(s, "fault", "short_body"),
        "peer closed connection without sending complete message body",
    ),
    "500": (lambda s: setattr(s, "status", 500), "HTTP status 500"),
}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles.create(tmp_path_factory.mktemp("service-tls"), name="EK Service")


@pytest.fixture(scope="module")
def ek_key(agent: PluginProcess) -> Iterator[ec.EllipticCurvePublicKey]:
    """One swtpm for the module with no EK certificate in NV (as Intel PTT ships), the
    agent configured for it (a P-256 EK and AK: quick); its EK key."""
    with SWTPM() as simulator:
        agent.configure(hcl(tcti=simulator.tcti, ek_algorithm="ecc256", ak_algorithm="ecc"))
        with TPMSession(simulator.tcti) as tpm:
            key = parse_tpm2b_public(tpm.read_ek("ecc256").public).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        yield key


@pytest.fixture
def service(tls: TLSFiles, ek_key: ec.EllipticCurvePublicKey, ek_ca: TestCA) -> DocumentServer:
    """Intel's service, as far as the test is concerned: it has the EK's certificate."""
    certificate = ek_ca.issue_ek_certificate(ek_key).public_bytes(Encoding.DER)
    encoded = base64.urlsafe_b64encode(certificate).decode().rstrip("=")
    body = json.dumps({"pubhash": "ignored", "certificate": encoded}).encode()
    running = DocumentServer(tls=tls, body=body + b" " * 200).start()
    yield running  # type: ignore[misc]
    running.stop()


def configure(
    server: PluginProcess, service: DocumentServer, tls: TLSFiles, ek_ca: TestCA, cache: Path
) -> None:
    origin = service.url.rsplit("/", 1)[0]
    download = hcl(
        allowed_hosts=["127.0.0.1"],
        ca_path=str(tls.ca),
        cache_path=str(cache),
        timeout=f"{TIMEOUT:g}s",
    )
    server.configure(
        hcl(ek_ca_path=str(ek_ca.bundle_path))
        + f'\nek_cert_download {{\nservice_urls {{ intel = "{origin}/ekcs/" }}\n{download}\n}}'
    )


@pytest.mark.parametrize("fault", FAULTS)
def test_a_faulty_service_is_unavailable_within_the_timeout(
    agent: PluginProcess,
    server: PluginProcess,
    service: DocumentServer,
    tls: TLSFiles,
    ek_ca: TestCA,
    tmp_path: Path,
    fault: str,
) -> None:
    bring_on, words = FAULTS[fault]
    bring_on(service)
    configure(server, service, tls, ek_ca, tmp_path / "cache")
    started = time.monotonic()
    audit = expect_rejection(agent, server, grpc.StatusCode.UNAVAILABLE, words)
    assert time.monotonic() - started < NO_HANG
    assert audit["check"] == "ek_cert_download"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    # The process lives on: the service healed, the same configuration admits.
    service.fault, service.status = None, 200
    assert relay_attestation(agent, server).spiffe_id


def cache_warnings(server: PluginProcess, seen: int) -> list[dict[str, str]]:
    return [
        entry
        for entry in log_entries(server)[seen:]
        if entry["@message"].startswith("ek_cert_download: cannot")
    ]


def test_a_cache_path_that_cannot_be_a_directory_warns_once_and_attests(
    agent: PluginProcess,
    server: PluginProcess,
    service: DocumentServer,
    tls: TLSFiles,
    ek_ca: TestCA,
    ek_key: ec.EllipticCurvePublicKey,
    tmp_path: Path,
) -> None:
    # An unwritable directory, even for root (whom chmod does not stop): its parent is
    # a regular file.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    seen = len(log_entries(server))
    configure(server, service, tls, ek_ca, blocker / "cache")
    for _ in range(2):
        assert relay_attestation(agent, server).spiffe_id.endswith(f"/tpm/{ek_hash(ek_key)}")
    assert len(service.paths) == 2  # no cache: fetched each time
    warnings = cache_warnings(server, seen)
    assert len(warnings) == 1, warnings
    assert warnings[0]["@level"] == "warn" and "Not a directory" in warnings[0]["reason"]


@pytest.fixture
def full_disk(server: PluginProcess) -> Iterator[None]:
    """The server plugin process may write no file byte (RLIMIT_FSIZE: EFBIG, as ENOSPC
    would be on a full disk; Python ignores SIGXFSZ), then the limit is lifted again."""
    pid = server.process.pid
    before = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, before[1]))
    yield
    resource.prlimit(pid, resource.RLIMIT_FSIZE, before)


def test_a_full_disk_warns_once_leaves_no_partial_file_and_attests(
    agent: PluginProcess,
    server: PluginProcess,
    service: DocumentServer,
    tls: TLSFiles,
    ek_ca: TestCA,
    full_disk: None,
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    seen = len(log_entries(server))
    configure(server, service, tls, ek_ca, cache)
    for _ in range(2):
        assert relay_attestation(agent, server).spiffe_id
    warnings = cache_warnings(server, seen)
    assert len(warnings) == 1, warnings
    assert "write" in warnings[0]["@message"] and "File too large" in warnings[0]["reason"]
    assert list(cache.iterdir()) == []  # the temporary file was removed
