"""The one exception hierarchy raised by the TPM primitives."""


class TPMError(Exception):
    """Base class of every error raised by `spire_tpm_attestor.tpm` and `ekcert`."""


class TPMStructureError(TPMError, ValueError):
    """Input is malformed, truncated, oversized or of an unsupported kind."""


class VerificationError(TPMError):
    """Input is well formed but the proof it carries does not verify."""
