"""EK certificates: server CPU to parse and verify the chain, clean and with each deviation.

The EK certificate (RSA 2048 key, for the `rsaes-oaep-key` class) is issued by a TestCA
intermediate (EC P-256) under its root, as the server sees it: the leaf loaded from the
agent's bytes, the intermediate sent along, the root from ek_ca_path. Each deviation class
of `tests.unit.x509_builders.DEVIATIONS` is applied to the same certificate. The chain
figure clears the signature cache first, so every signature is checked. Figures are CPU
time of this thread, in µs; `cryptography` alone (strict load, extensions parsed) is the
floor the clean path is compared with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.x509 import chain, load_certificate, verify_chain
from tests.bench.measure import Figure, Stats, Table, progress
from tests.unit.x509_builders import EK_DEVIATIONS, der

ROUNDS = 400
WARMUP = 40


def _cpu(operation: Callable[[], object], before: Callable[[], object] = lambda: None) -> Stats:
    for _ in range(WARMUP):
        before()
        operation()
    samples = []
    for _ in range(ROUNDS):
        before()
        started = time.thread_time_ns()
        operation()
        samples.append((time.thread_time_ns() - started) / 1e3)
    return Stats.of(samples)


def _strict_floor(data: bytes) -> None:
    certificate = x509.load_der_x509_certificate(data)
    certificate.extensions  # noqa: B018


def run() -> list[Table]:
    with TemporaryDirectory() as directory:
        ca = TestCA.create(Path(directory))
    clean = der(ca.issue_ek_certificate(rsa.generate_private_key(65537, 2048).public_key()))
    intermediate = load_certificate(der(ca.intermediate_certificate))
    root = load_certificate(der(ca.root_certificate))
    now = datetime.now(UTC)
    forget_signatures = chain._signature_results._results.clear

    def parse_and_verify(data: bytes) -> Callable[[], object]:
        return lambda: verify_chain(load_certificate(data), [intermediate], [root], now)

    cases = [("clean", clean)] + [
        (deviation.label, deviation.make(clean, ca.intermediate)[0]) for deviation in EK_DEVIATIONS
    ]
    table = Table(
        f"EK certificate, server CPU µs ({ROUNDS} rounds after {WARMUP} warm-up; RSA 2048 EK, "
        "P-256 intermediate and root)",
        ("certificate", "bytes", "parse p50", "parse p99", "parse+chain p50", "p99", "x clean"),
    )
    floor = _cpu(lambda: _strict_floor(clean))
    clean_total = 0.0
    for label, data in cases:
        progress(label)
        parse = _cpu(lambda data=data: load_certificate(data))  # type: ignore[misc]
        total = _cpu(parse_and_verify(data), forget_signatures)
        clean_total = clean_total or total.median
        table.record(
            Figure.of_stats(f"{label}: parse", parse, "µs"),
            Figure.of_stats(f"{label}: parse + chain", total, "µs"),
        )
        table.add(
            label,
            len(data),
            f"{parse.median:.0f}",
            f"{parse.p99:.0f}",
            f"{total.median:.0f}",
            f"{total.p99:.0f}",
            f"{total.median / clean_total:.2f}",
        )
    table.record(Figure.of_stats("floor: cryptography load + extensions", floor, "µs"))
    table.note(
        f"floor: cryptography alone loads the clean certificate and its extensions in "
        f"{floor.median:.0f} µs p50; the clean path adds only the outer DER split "
        "(no re-encoding: that runs only for a certificate cryptography refuses)"
    )
    table.note("parse+chain: two signature checks (leaf by intermediate, intermediate by root)")
    return [table]
