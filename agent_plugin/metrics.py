"""The agent plugin's metrics (declared here, exported only when telemetry is on; see
spire_tpm_attestor.runtime.metrics), and the `step` that feeds them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from agent_plugin.tpm import TPMAccessError
from spire_tpm_attestor.runtime.metrics import Counter, Histogram

STEP_SECONDS = Histogram(
    "agent_step_seconds",
    "Duration of each attestation step that succeeded: open (the TPM and its session), "
    "ak_create, devid_load, ek_read, activate_credential, quote, devid_certify, "
    "event_log_read",
    ("step",),
)
TPM_ERRORS = Counter(
    "agent_tpm_errors_total",
    "TPM failures, by the step (the TPM command it sends) that failed and the TPM "
    "response code (empty when the TPM could not be reached or answered malformed data)",
    ("step", "rc"),
)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Times a step that succeeds; counts the TPM failure of one that does not."""
    started = time.perf_counter()
    try:
        yield
    except TPMAccessError as error:
        TPM_ERRORS.inc(step=name, rc="" if error.rc is None else f"{error.rc:#x}")
        raise
    STEP_SECONDS.observe(time.perf_counter() - started, step=name)
