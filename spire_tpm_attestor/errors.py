"""The one error tree of spire-tpm-attestor.

Every error the core raises about its input is one of three kinds, and the kind alone
decides what SPIRE is told (the table in `spire_tpm_attestor.runtime.status`)::

    AttestorError
    ├── MalformedInput       cannot be parsed, is truncated, oversized or of an
    │                        unsupported kind                        -> INVALID_ARGUMENT
    ├── NotProven            well formed, but does not prove what it claims
    │                        (a signature, a chain, a binding, a key's attributes)
    │                                                                -> PERMISSION_DENIED
    └── SourceUnavailable    a source of trust material could not be consulted
                             (a file, a directory, an endpoint)      -> UNAVAILABLE

The primitives (`spire_tpm_attestor.tpm`, `spire_tpm_attestor.x509`) raise only these:
every exception of `cryptography` is caught at their edge and re-raised as one of them,
so callers never catch `ValueError` or `InvalidSignature`. A `ValueError` that escapes
means the caller broke a precondition (a naive datetime, a short nonce), not bad input.

This module is pure: it knows nothing of gRPC.
"""

from __future__ import annotations

__all__ = ["AttestorError", "MalformedInput", "NotProven", "SourceUnavailable"]


class AttestorError(Exception):
    """The root: an error about the input or the trust material, never a bug."""


class MalformedInput(AttestorError):
    """Input is malformed, truncated, oversized or of an unsupported kind."""


class NotProven(AttestorError):
    """Input is well formed but the proof it carries does not verify."""


class SourceUnavailable(AttestorError):
    """A source of trust material (file, directory, endpoint) cannot be read now."""
