"""spire-tpm-attestor: SPIRE node attestation with a TPM 2.0 (shared core)."""

__version__ = "0.1.0"
