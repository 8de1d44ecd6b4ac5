"""Reading a file an operator names (a token, a policy, a key, a certificate, an
allowlist entry): whole, but never more than its reader allows, so a wrong path (a log,
a device, a huge download) costs a clear error instead of the process's memory."""

from __future__ import annotations

import os

from spire_tpm_attestor.errors import MalformedInput


class FileTooLarge(MalformedInput):
    """A file is larger than its reader allows; the message names the file and the limit."""


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """The content of `path` if it is at most `limit` bytes, else FileTooLarge; OSError
    as opening or reading raises it."""
    with open(path, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(f"{os.fspath(path)} is larger than {limit} bytes")
    return data
