"""What fetching a missing EK issuer (ek_aia_fetch) or EK certificate (ek_cert_download) adds.

In process, per attestation: the EK chain check with the intermediate sent by the agent
(the baseline), completed by AIA from the disk cache and from a loopback HTTP server
(kept-alive connection, each fetch under its Deadline, no cache), and the EK
certificate from the download cache and from the loopback server. Signature results are
cached as in the server, so the figures are those of a node that re-attests. Real
services add their network round trip.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from server_plugin.checks import verify_ek_chain
from server_plugin.ek_sources import AIAFetch, EKCertDownload
from server_plugin.web_fetch import DiskCache, FetchSettings, WebFetcher
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.x509 import load_ca_bundle, load_certificate
from tests.bench.measure import Figure, Stats, Table, ms, progress
from tests.integration.http_servers import DocumentServer

ROUNDS = 300


def timed(operation: Callable[[], object]) -> Stats:
    for _ in range(20):  # warm-up: imports, client, signature cache
        operation()
    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        operation()
        samples.append(time.perf_counter() - started)
    return Stats.of(samples)


def settings() -> FetchSettings:
    return FetchSettings("bench", frozenset({"127.0.0.1"}), timeout=5.0, max_size=65536)


class _RSAArea:
    """Just what EKCertDownload asks of the EK public area: its key."""

    def __init__(self, key: rsa.RSAPublicKey) -> None:
        self._key = key

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key


def run() -> list[Table]:
    table = Table(
        f"EK certificate and chain from elsewhere ({ROUNDS} rounds)",
        ["case", "median", "p99"],
    )
    with tempfile.TemporaryDirectory(prefix="bench-ek-sources-") as workdir:
        work = Path(workdir)
        ca = TestCA.create(work / "ca")
        roots = load_ca_bundle(ca.root_path)
        server = DocumentServer(body=ca.intermediate_certificate.public_bytes(Encoding.DER))
        server.start()
        try:
            url = server.url.replace("/allowlist.json", "/ca.cer")
            key = rsa.generate_private_key(65537, 2048).public_key()
            leaf = ca.issue_ek_certificate(key, ca_issuers_url=url)
            certificate = load_certificate(leaf.public_bytes(Encoding.DER))
            intermediate = ca.intermediate_certificate.public_bytes(Encoding.DER)

            def row(name: str, operation: Callable[[], object]) -> None:
                progress(name)
                stats = timed(operation)
                table.add(name, ms(stats.median, 3), ms(stats.p99, 3))
                table.record(Figure.of_stats(name, stats, "ms", 1e3))

            row(
                "chain, intermediate from the agent",
                lambda: verify_ek_chain(certificate, [intermediate], roots),
            )
            cached = AIAFetch(WebFetcher(settings()), DiskCache(str(work / "aia"), "bench"))
            row(
                "chain by AIA, disk cache hit",
                lambda: verify_ek_chain(certificate, [], roots, cached),
            )
            fetched = AIAFetch(WebFetcher(settings()), None)
            row(
                "chain by AIA, fetched (loopback)",
                lambda: verify_ek_chain(certificate, [], roots, fetched),
            )

            server.body = leaf.public_bytes(Encoding.DER)
            area = _RSAArea(key)
            pub_hash = ek_hash(key)
            base = server.url.replace("/allowlist.json", "/")
            cache = DiskCache(str(work / "ek"), "bench")
            download = EKCertDownload({"amd": base}, WebFetcher(settings()), cache, 0.0)
            download.keep(pub_hash, certificate)
            row("EK certificate, download cache hit", lambda: download.certificate(area, pub_hash))  # type: ignore[arg-type]
            uncached = EKCertDownload({"amd": base}, WebFetcher(settings()), None, 0.0)
            row(
                "EK certificate, downloaded (loopback)",
                lambda: uncached.certificate(area, pub_hash),
            )  # type: ignore[arg-type]
            for fetching in (cached, fetched, download, uncached):
                fetching.close()
        finally:
            server.stop()
    table.note(
        "fetches go to a loopback HTTP server on this machine; a real service adds "
        "its round trip, once per URL (AIA) or EK (download) with cache_path set"
    )
    return [table]
