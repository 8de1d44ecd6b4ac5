"""Errors that carry the gRPC status a plugin RPC answers with.

Handlers raise these; the runtime turns them into the status SPIRE sees, so the
choice of code (which decides whether a SPIRE agent retries) is made where the
failure is understood. Errors of the core (`spire_tpm_attestor.errors`) carry no status;
`STATUS_OF_ERROR` below is the one place that maps each of their branches to one.
"""

from __future__ import annotations

import grpc

from spire_tpm_attestor.errors import (
    AttestorError,
    MalformedInput,
    NotProven,
    SourceUnavailable,
)


class PluginError(Exception):
    """A failure to report to SPIRE with a specific gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(PluginError):
    """Malformed input: the agent sent something that cannot be parsed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class PermissionDenied(PluginError):
    """A definitive policy rejection: the SPIRE agent stops at once."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(PluginError):
    """Transient trouble (e.g. an allowlist endpoint is down): the agent retries."""

    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(PluginError):
    """The plugin is not in a state to serve the call (e.g. not configured)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Internal(PluginError):
    """A local failure that is not the caller's fault (e.g. the TPM refused)."""

    code = grpc.StatusCode.INTERNAL


class DeadlineExceeded(PluginError):
    """The peer took too long (e.g. never answered a challenge): the agent retries."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


# The one table: each branch of the core's error tree and what SPIRE is told.
STATUS_OF_ERROR: dict[type[AttestorError], type[PluginError]] = {
    MalformedInput: InvalidArgument,  # the agent sent something that cannot be parsed
    NotProven: PermissionDenied,  # definitive: the agent stops at once
    SourceUnavailable: Unavailable,  # transient: the agent retries
}


def status_of(kind: type[AttestorError]) -> type[PluginError]:
    """The status for an error class: its branch's, or INTERNAL outside the branches."""
    for cls in kind.__mro__:
        status = STATUS_OF_ERROR.get(cls)
        if status is not None:
            return status
    return Internal


def status_error(error: AttestorError, message: str) -> PluginError:
    """The PluginError for `error`'s branch, saying `message`."""
    return status_of(type(error))(message)
