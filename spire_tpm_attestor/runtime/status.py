"""Errors that carry the gRPC status a plugin RPC answers with.

Handlers raise these; the runtime turns them into the status SPIRE sees, so the
choice of code (which decides whether a SPIRE agent retries) is made where the
failure is understood.
"""

from __future__ import annotations

import grpc


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
