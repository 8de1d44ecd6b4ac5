"""Agent on swtpm: wall time from opening the TPM to evidence ready, and per step."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench.measure import Figure, Table, median, ms, progress, require_swtpm

ROUNDS = 5
SECRET = bytes(range(32))
PERSISTED_EK = 0x81010001


def _persist_ek(tcti: str) -> None:
    """What a provisioning script does: persist the RSA EK at the TCG handle."""
    import tpm2_pytss as tss
    import tpm2_pytss.utils as tss_utils

    esapi = tss.ESAPI(tcti)
    try:
        _, template = tss_utils.create_ek_template("EK-RSA2048", tss_utils.NVReadEK(esapi))
        key, *_ = esapi.create_primary(
            tss.TPM2B_SENSITIVE_CREATE(), template, tss.ESYS_TR.ENDORSEMENT
        )
        esapi.evict_control(tss.ESYS_TR.OWNER, key, PERSISTED_EK)
        esapi.flush_context(key)
    finally:
        esapi.close()


def _one(tcti: str, ak_algorithm: str) -> dict[str, float]:
    """One attestation's TPM work, as build_payload and answer_challenge do it."""
    from agent_plugin.tpm import TPMSession
    from spire_tpm_attestor.tpm.credential import make_credential
    from spire_tpm_attestor.tpm.structures import parse_tpm2b_public

    times: dict[str, float] = {}

    def step(name: str, action: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = action()
        times[name] = time.perf_counter() - started
        return result

    began = time.perf_counter()
    tpm = step("open the TPM", lambda: TPMSession(tcti).__enter__())
    try:
        ak_public = step("AK creation", lambda: tpm.create_ak(ak_algorithm))
        ek = step("EK read or creation (+ certificate)", lambda: tpm.read_ek("rsa2048"))
        times["evidence ready (from start)"] = time.perf_counter() - began
        blob, secret = make_credential(
            parse_tpm2b_public(ek.public), parse_tpm2b_public(ak_public).name(), SECRET
        )
        answer = step("activation", lambda: tpm.activate_credential(blob, secret))
        if answer != SECRET:
            raise RuntimeError("swtpm did not recover the secret")
        step("quote (PCRs 0-7, sha256)", lambda: tpm.quote([("sha256", list(range(8)))], SECRET))
    finally:
        step("close", lambda: tpm.__exit__(None, None, None))
    times["total"] = time.perf_counter() - began
    return times


def run() -> list[Table]:
    require_swtpm()
    from spire_tpm_attestor.testing.ca import TestCA
    from spire_tpm_attestor.testing.swtpm import SWTPM, provision_ek_certificates

    columns: dict[str, dict[str, float]] = {}
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as work:
        ca = TestCA.create(Path(work) / "ca")
        for ek_case in ("created", "persisted"):
            for ak_algorithm in ("ecc", "rsa"):
                progress(f"agent steps: EK {ek_case}, {ak_algorithm} AK, {ROUNDS} rounds")
                with SWTPM() as swtpm:
                    provision_ek_certificates(swtpm.tcti, ca, algorithms=("rsa2048",))
                    if ek_case == "persisted":
                        _persist_ek(swtpm.tcti)
                    _one(swtpm.tcti, ak_algorithm)  # warm-up
                    rounds = [_one(swtpm.tcti, ak_algorithm) for _ in range(ROUNDS)]
                column = f"EK {ek_case}, {ak_algorithm.upper()} AK"
                columns[column] = {name: median([r[name] for r in rounds]) for name in rounds[0]}
                figures.extend(
                    Figure.of(f"{column}: {name}", [r[name] for r in rounds], "ms", 1e3)
                    for name in rounds[0]
                )
    table = Table(
        "agent TPM work per attestation on swtpm (RSA-2048 EK with its NV certificate), "
        "wall ms, median",
        ("step", *columns),
    )
    for name in next(iter(columns.values())):
        table.add(name, *(ms(column[name], 1) for column in columns.values()))
    table.record(*figures)
    table.note(
        f"{ROUNDS} rounds after one warm-up, each on one TPMSession as the agent plugin opens "
        "per attestation; 'persisted': an RSA EK at 0x81010001 matching the TCG template, "
        "which read_ek now uses instead of deriving the key again"
    )
    return [table]
