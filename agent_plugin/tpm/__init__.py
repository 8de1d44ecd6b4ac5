"""The agent's TPM: EK, AK, credential activation and quotes through tpm2-pytss (ESAPI).

`TPMSession` is one conversation with the TPM, put together from one module per concern:

- `session`: opening the TCTI, handle bookkeeping (every transient is flushed on close),
  the salted session that encrypts parameters, the SRK;
- `nv`: NV reads and the EK certificate lookup (the TCG NV index, then a file);
- `keys`: the EK, the AK and the DevID key; credential activation, DevID certify and sign;
- `quote`: PCR quotes.
"""

import os

# ESYS logs every expected failure (probing for absent NV indices) to stderr; keep it
# quiet unless the operator asked for logs. Must be set before libtss2 is loaded, which
# the submodules below do.
os.environ.setdefault("TSS2_LOG", "all+NONE")

from agent_plugin.tpm.keys import EndorsementKey, KeyOperations
from agent_plugin.tpm.quote import PCRSelection, PCRValue, Quote, QuoteOperations
from agent_plugin.tpm.session import (
    DEFAULT_TPM_TIMEOUT,
    TPMAccessError,
    TPMUnresponsive,
    flush_all_transients,
)

__all__ = [
    "DEFAULT_TPM_TIMEOUT",
    "EndorsementKey",
    "PCRSelection",
    "PCRValue",
    "Quote",
    "TPMAccessError",
    "TPMSession",
    "TPMUnresponsive",
    "flush_all_transients",
]


class TPMSession(KeyOperations, QuoteOperations):
    """One conversation with the TPM, normally one attestation.

    Use it as a context manager: `close()` flushes every transient object and session it
    created. Objects of other processes are left alone.
    """
