"""What both plugins' configurations carry for the operator: log levels and the
Prometheus endpoint, read the way SPIRE reads its own.

    log_level = "INFO"             # the plugin's own lines: DEBUG, INFO, WARN, ERROR
    library_log_level = "WARN"     # every library's lines (watchdog, httpx, grpc...)
    telemetry {
        Prometheus {
            host = "127.0.0.1"     # default "localhost", as in SPIRE
            port = 9988
        }
    }

Reading opens nothing; `apply` (for the configuration Configure commits) binds the
endpoint and sets the levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spire_tpm_attestor.runtime.config import ConfigReader, Option, declare
from spire_tpm_attestor.runtime.logs import (
    DEFAULT_LEVEL,
    DEFAULT_LIBRARY_LEVEL,
    LEVELS,
    parse_level,
    set_levels,
)
from spire_tpm_attestor.runtime.metrics import ENDPOINT, PrometheusSettings

DEFAULT_PROMETHEUS_HOST = "localhost"

# Both plugins read these next to their own options.
OBSERVABILITY_OPTIONS = declare(
    Option(
        "log_level",
        "string",
        "the plugin's own lines: `DEBUG`, `INFO`, `WARN` or `ERROR` (SPIRE's names, any "
        "case). A line below the level is dropped before it is formatted; SPIRE also drops "
        "plugin lines below its own `log_level`",
        default=DEFAULT_LEVEL,
    ),
    Option(
        "library_log_level",
        "string",
        "the lines of the libraries the plugin uses (watchdog, httpx, httpcore, grpc, "
        "asyncio...): they say nothing an operator acts on unless something is wrong",
        default=DEFAULT_LIBRARY_LEVEL,
    ),
    Option(
        "telemetry",
        "block",
        '`telemetry { Prometheus { host = "..." port = N } }`: serve Prometheus metrics on '
        "`http://host:port/metrics`, as SPIRE's own `telemetry` block does; `host` "
        "defaults to `localhost`, `port = 0` takes any free port (logged). Give each plugin "
        "(and SPIRE) its own port",
        default_text="none: no endpoint",
    ),
)


@dataclass(frozen=True)
class Observability:
    log_level: int = LEVELS[DEFAULT_LEVEL]
    library_log_level: int = LEVELS[DEFAULT_LIBRARY_LEVEL]
    prometheus: PrometheusSettings | None = None


def _one_block(value: Any, what: str) -> dict[str, Any]:
    """pyhcl gives a block as a dict (JSON configurations: a list of one dict)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a block: {what.rsplit('.', 1)[-1]} {{ ... }}")
    return value


def parse_telemetry(value: Any) -> PrometheusSettings | None:
    """The `telemetry` block: only `Prometheus { host port }` (ValueError otherwise)."""
    telemetry = _one_block(value, "telemetry")
    unknown = sorted(set(telemetry) - {"Prometheus"})
    if unknown:
        raise ValueError(
            f"telemetry.{unknown[0]}: not supported by this plugin (it serves Prometheus only)"
        )
    if "Prometheus" not in telemetry:
        return None
    prometheus = _one_block(telemetry["Prometheus"], "telemetry.Prometheus")
    unknown = sorted(set(prometheus) - {"host", "port"})
    if unknown:
        raise ValueError(f"telemetry.Prometheus.{unknown[0]}: unknown option")
    host = prometheus.get("host", DEFAULT_PROMETHEUS_HOST)
    if not isinstance(host, str) or not host:
        raise ValueError("telemetry.Prometheus.host: expected a host name or address")
    port = prometheus.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError("telemetry.Prometheus.port: expected a port number (0-65535)")
    return PrometheusSettings(host, port)


def read_observability(reader: ConfigReader) -> Observability:
    prometheus = None
    telemetry = reader.raw("telemetry")
    if telemetry is not None:
        try:
            prometheus = parse_telemetry(telemetry)
        except ValueError as exc:
            reader.problem(str(exc))
    return Observability(
        log_level=_level(reader, "log_level"),
        library_log_level=_level(reader, "library_log_level"),
        prometheus=prometheus,
    )


def _level(reader: ConfigReader, option: str) -> int:
    """The option's level (its declared default when absent, or wrong: a problem then)."""
    return reader.parsed(option, parse_level) or parse_level(
        str(OBSERVABILITY_OPTIONS[option].default)
    )


def apply(observability: Observability) -> None:
    """For the committed configuration: serve its endpoint (OSError when the address
    cannot be bound; nothing changed then), then take its log levels."""
    ENDPOINT.serve(observability.prometheus)
    set_levels(observability.log_level, observability.library_log_level)
