"""hclog-style JSON logging on stderr, the format go-plugin parses (protocol ref. §7).

Every line is one JSON object whose `@level` is one of trace/debug/info/warn/error,
whose `@timestamp` has exactly six fractional digits and an explicit offset, and
whose values are all strings: a non-string `@message`/`@level`/`@timestamp` would
crash the goroutine in SPIRE that reads plugin stderr.
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


def configure_logging(stream: TextIO | None = None, level: int = logging.DEBUG) -> None:
    """Route all Python logging, warnings and uncaught exceptions to hclog JSON on stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(HCLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
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
