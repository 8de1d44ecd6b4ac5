"""hclog-style JSON logging on stderr, the format go-plugin parses (docs/protocol.md, "Logs").

Every line is one JSON object whose `@level` is one of trace/debug/info/warn/error,
whose `@timestamp` has exactly six fractional digits and an explicit offset, and
whose values are all strings: a non-string `@message`/`@level`/`@timestamp` would
crash the goroutine in SPIRE that reads plugin stderr.

Two levels decide what is written: the plugin's own loggers (`spire_tpm_attestor`,
`server_plugin`, `agent_plugin`) follow `log_level`, every other logger (watchdog, httpx,
httpcore, grpc, asyncio...) follows `library_log_level`, WARN unless the operator turns
it up. A line below its logger's level is dropped by `Logger.isEnabledFor` before any
record is made, so it is never formatted.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
import warnings
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_STANDARD_RECORD_KEYS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


# SPIRE's log_level names; SPIRE reads them case-insensitively, and so do we.
LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
}
PLUGIN_LOGGERS = ("spire_tpm_attestor", "server_plugin", "agent_plugin")
# SPIRE's own default; a debug line costs CPU on every attestation even when SPIRE,
# at INFO, drops it (README, "What logs and metrics cost").
DEFAULT_LEVEL = "INFO"
DEFAULT_LIBRARY_LEVEL = "WARN"


def parse_level(text: str) -> int:
    """The logging level of one of SPIRE's level names."""
    level = LEVELS.get(text.upper())
    if level is None:
        raise ValueError(f"{text!r} is not one of {', '.join(LEVELS)}")
    return level


def set_levels(plugin_level: int, library_level: int) -> None:
    """The plugin's loggers at `plugin_level`, every other logger at `library_level`."""
    logging.getLogger().setLevel(library_level)
    for name in PLUGIN_LOGGERS:
        logging.getLogger(name).setLevel(plugin_level)


def hclog_level(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warn"
    if levelno >= logging.INFO:
        return "info"
    if levelno >= logging.DEBUG:
        return "debug"
    return "trace"


def hclog_timestamp(epoch_seconds: float) -> str:
    # isoformat(timespec="microseconds") always writes six digits; the offset is +00:00.
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).isoformat(timespec="microseconds")


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


class HCLogFormatter(logging.Formatter):
    """Formats a record as one hclog JSON line; `extra=` fields become string fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "@level": hclog_level(record.levelno),
            "@message": record.getMessage(),
            "@timestamp": hclog_timestamp(record.created),
            "@module": record.name,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_RECORD_KEYS and not key.startswith("_"):
                line[key] = _as_text(value)
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).strip()
        # ASCII escapes: a lone surrogate (a non-UTF-8 file name) cannot make a write fail.
        return json.dumps(line, ensure_ascii=True)


def configure_logging(stream: TextIO | None = None) -> None:
    """Route all Python logging, warnings and uncaught exceptions to hclog JSON on stderr,
    at the default levels until a configuration sets others."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(HCLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_levels(LEVELS[DEFAULT_LEVEL], LEVELS[DEFAULT_LIBRARY_LEVEL])
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    logging.getLogger("spire_tpm_attestor").error(
        "uncaught exception", exc_info=(exc_type, exc, tb)
    )


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    logging.getLogger("spire_tpm_attestor").error(
        "uncaught exception in thread",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        extra={"thread": args.thread.name if args.thread else ""},
    )
