"""Looking into a simulator's state from a test."""

from __future__ import annotations

import pytest

tss = pytest.importorskip("tpm2_pytss")


def leftover_handles(tcti: str) -> list[int]:
    """Transient objects and sessions still in the TPM (swtpm has no resource manager)."""
    esapi = tss.ESAPI(tcti)
    try:
        handles: list[int] = []
        for first in (0x80000000, 0x02000000, 0x03000000):  # objects, loaded + saved sessions
            _, data = esapi.get_capability(tss.TPM2_CAP.HANDLES, first, 64)
            handles.extend(int(handle) for handle in data.data.handles)
        return handles
    finally:
        esapi.close()
