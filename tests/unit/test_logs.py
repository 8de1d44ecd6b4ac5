"""Log levels: SPIRE's names, the plugin's own level apart from the libraries', and
lines below the level never formatted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig, read_config
from spire_tpm_attestor.runtime.logs import (
    LEVELS,
    PLUGIN_LOGGERS,
    HCLogFormatter,
    configure_logging,
    parse_level,
    set_levels,
)
from spire_tpm_attestor.runtime.metrics import PrometheusSettings
from spire_tpm_attestor.runtime.observability import (
    OBSERVABILITY_OPTIONS,
    Observability,
    read_observability,
)


class CountingFormatter(HCLogFormatter):
    def __init__(self) -> None:
        super().__init__()
        self.formatted = 0

    def format(self, record: logging.LogRecord) -> str:
        self.formatted += 1
        return super().format(record)


@pytest.fixture
def output() -> Iterator[tuple[io.StringIO, CountingFormatter]]:
    """The process's logging as the plugins set it up, into a buffer; restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, [logging.getLogger(n).level for n in PLUGIN_LOGGERS])
    stream = io.StringIO()
    configure_logging(stream)
    formatter = CountingFormatter()
    root.handlers[0].setFormatter(formatter)
    yield stream, formatter
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in zip(PLUGIN_LOGGERS, saved[2], strict=True):
        logging.getLogger(name).setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_spire_level_names_in_any_case() -> None:
    assert parse_level("debug") == logging.DEBUG
    assert parse_level("WARN") == logging.WARNING
    assert parse_level("Error") == logging.ERROR
    with pytest.raises(ValueError, match="'WARNING' is not one of DEBUG, INFO, WARN, ERROR"):
        parse_level("WARNING")


def test_by_default_the_plugin_logs_info_and_libraries_only_warnings(
    output: tuple[io.StringIO, CountingFormatter],
) -> None:
    stream, _ = output
    logging.getLogger("server_plugin.allowlist.http").info("ours")
    logging.getLogger("server_plugin.reload").debug("ours, below the level")
    for library in ("watchdog.observers.inotify_buffer", "httpx", "httpcore.connection", "grpc"):
        logging.getLogger(library).info("a library's chatter")
    logging.getLogger("asyncio").warning("a library's warning")
    assert [(line["@module"], line["@message"]) for line in lines(stream)] == [
        ("server_plugin.allowlist.http", "ours"),
        ("asyncio", "a library's warning"),
    ]


def test_the_two_levels_are_set_apart(output: tuple[io.StringIO, CountingFormatter]) -> None:
    stream, _ = output
    set_levels(LEVELS["ERROR"], LEVELS["DEBUG"])
    logging.getLogger("spire_tpm_attestor.audit").warning("ours, below ERROR")
    logging.getLogger("agent_plugin.tpm").error("ours")
    logging.getLogger("httpcore.http11").debug("a library's debug line")
    assert [line["@message"] for line in lines(stream)] == ["ours", "a library's debug line"]


def test_a_line_below_the_level_is_never_formatted(
    output: tuple[io.StringIO, CountingFormatter],
) -> None:
    _, formatter = output
    calls: list[str] = []

    class Expensive:
        def __str__(self) -> str:
            calls.append("str")
            return "expensive"

    log = logging.getLogger("server_plugin.plugin")
    for _ in range(100):
        log.debug("a debug line %s", Expensive(), extra={"field": Expensive()})
        logging.getLogger("watchdog").info("an event %s", Expensive())
    assert (formatter.formatted, calls) == (0, [])
    log.info("written %s", Expensive())
    assert formatter.formatted == 1
    assert calls  # (pytest's own capture formats it too)


def read(text: str) -> Observability:
    return read_config(
        text, CoreConfig("example.org"), OBSERVABILITY_OPTIONS, _Holder.build
    ).observability


class _Holder:
    def __init__(self, observability: Observability) -> None:
        self.observability = observability

    @staticmethod
    def build(reader: object, core: CoreConfig) -> _Holder:
        return _Holder(read_observability(reader))  # type: ignore[arg-type]

    def close(self) -> None:
        pass


def test_observability_options() -> None:
    assert read("") == Observability(logging.INFO, logging.WARNING, None)
    assert read(
        'log_level = "debug"\nlibrary_log_level = "INFO"\n'
        'telemetry { Prometheus { host = "0.0.0.0"\nport = 9988 } }'
    ) == Observability(logging.DEBUG, logging.INFO, PrometheusSettings("0.0.0.0", 9988))
    assert read("telemetry { Prometheus { port = 9988 } }").prometheus == PrometheusSettings(
        "localhost", 9988
    )
    assert read("telemetry {}").prometheus is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('log_level = "verbose"', "log_level: 'verbose' is not one of DEBUG, INFO, WARN, ERROR"),
        ("library_log_level = 3", "library_log_level: expected a string, got integer"),
        ("telemetry = 9988", "telemetry: expected a block"),
        (
            'telemetry { DogStatsd { address = "localhost:8125" } }',
            "telemetry.DogStatsd: not supported by this plugin (it serves Prometheus only)",
        ),
        ('telemetry { Prometheus { host = "x" } }', "telemetry.Prometheus.port: expected a port"),
        ("telemetry { Prometheus { port = 70000 } }", "telemetry.Prometheus.port: expected a port"),
        ('telemetry { Prometheus { port = "9988" } }', "telemetry.Prometheus.port: expected"),
        (
            "telemetry { Prometheus { port = 1\nhots = 2 } }",
            "telemetry.Prometheus.hots: unknown option",
        ),
    ],
)
def test_observability_problems(text: str, problem: str) -> None:
    with pytest.raises(ConfigProblems) as problems:
        read(text)
    assert any(p.startswith(problem) for p in problems.value.problems), problems.value.problems
