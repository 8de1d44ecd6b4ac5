"""Reading the firmware event log the server asks for.

The kernel exposes the log the firmware handed over at boot (TCG PC Client Platform
Firmware Profile) in securityfs. The agent sends it as read; the server parses it and
replays it against the quote, so nothing here needs to understand it. A log the agent
cannot send is not an attestation error: the response says why it is absent, and the
server's policy decides whether that matters.
"""

from __future__ import annotations

import logging

from spire_tpm_attestor import wire
from spire_tpm_attestor.files import FileTooLarge, read_bounded

DEFAULT_EVENT_LOG_PATH = "/sys/kernel/security/tpm0/binary_bios_measurements"
DEFAULT_MAX_EVENT_LOG_SIZE = 1024 * 1024
MAX_EVENT_LOG_SIZE_LIMIT = wire.MAX_EVENT_LOG  # what the server accepts

log = logging.getLogger("agent_plugin")


def read_event_log(path: str, max_size: int) -> tuple[bytes, str]:
    """(the log, "") or (b"", why there is none); never raises for a bad file.

    The read is bounded (securityfs reports a size of 0, so the size is learnt by reading).
    """
    if not path:
        return b"", "event_log_path is empty: the agent does not send an event log"
    try:
        data = read_bounded(path, max_size)
    except FileTooLarge:
        reason = f"the event log at {path} is larger than max_event_log_size ({max_size} bytes)"
        log.warning("firmware event log not sent", extra={"path": path, "reason": reason})
        return b"", reason
    except FileNotFoundError:
        log.debug("no firmware event log", extra={"path": path})
        return b"", f"there is no event log at {path}"
    except OSError as exc:
        reason = f"the event log at {path} cannot be read: {exc.strerror or exc}"
        log.warning("firmware event log not sent", extra={"path": path, "reason": reason})
        return b"", reason
    if not data:
        return b"", f"the event log at {path} is empty"
    return data, ""
