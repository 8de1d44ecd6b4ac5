"""Reading plugin configuration: HCL v1 text from SPIRE into typed values.

One `ConfigReader` walks the parsed HCL, takes each option with its expected type,
and collects *every* problem instead of stopping at the first, so `Configure` can
reject with all of them at once and `Validate` can return one note per problem.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import hcl
from hcl.parser import HclParser


class Closeable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T")
C = TypeVar("C", bound=Closeable)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigProblems(Exception):
    """The configuration has one or more problems, each a self-contained sentence."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class CoreConfig:
    """What SPIRE itself passes in `core_configuration`."""

    trust_domain: str


_parser_lock = threading.Lock()
_parser: HclParser | None = None


def _load_hcl(text: str) -> Any:
    """`hcl.loads`, but with one parser: pyhcl builds its parse tables anew for every
    parser, which costs ~20 ms on each Configure, Validate and reload."""
    global _parser
    if not hcl.api.isHcl(text):
        return json.loads(text)
    with _parser_lock:
        if _parser is None:
            _parser = HclParser()
        return _parser.parse(text)


def parse_hcl(text: str) -> dict[str, Any]:
    """Parse SPIRE's `hcl_configuration` (HCL v1, or the raw `plugin_data_file` bytes)."""
    if not text.strip():
        return {}
    try:
        data = _load_hcl(text)
    except Exception as exc:  # pyhcl raises ValueError and its own lexer errors
        raise ConfigProblems([f"configuration is not valid HCL: {exc}"]) from exc
    if not isinstance(data, dict):
        raise ConfigProblems(["configuration must be a set of key = value pairs"])
    return data


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration: "500ms", "60s", "5m", "1h", "1h30m", "1.5h"."""
    parts = _DURATION_PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f'{text!r} is not a duration such as "500ms", "60s", "5m" or "1h"')
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def _type_name(value: Any) -> str:
    return {
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        list: "list",
        dict: "block",
    }.get(type(value), type(value).__name__)


class ConfigReader:
    """Takes typed options out of one HCL object, recording problems under `prefix`."""

    def __init__(self, data: dict[str, Any], problems: list[str], prefix: str = "") -> None:
        self._data = data
        self._problems = problems
        self._prefix = prefix
        self._taken: set[str] = set()

    def problem(self, message: str) -> None:
        self._problems.append(message)

    def key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _take(self, name: str) -> Any:
        self._taken.add(name)
        return self._data.get(name)

    def _wrong_type(self, name: str, expected: str, value: Any) -> None:
        self.problem(f"{self.key(name)}: expected {expected}, got {_type_name(value)}")

    def has(self, name: str) -> bool:
        return name in self._data

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self._take(name)
        if value is None:
            return default
        if not isinstance(value, str):
            self._wrong_type(name, "a string", value)
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._take(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._wrong_type(name, "a boolean (true or false)", value)
            return default
        return value

    def integer(
        self,
        name: str,
        default: int | None,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        value = self._take(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong_type(name, "an integer", value)
            return default
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.problem(f"{self.key(name)}: {value} is outside {minimum}..{maximum}")
            return default
        return value

    def string_list(self, name: str) -> list[str]:
        value = self._take(name)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._wrong_type(name, "a list of strings", value)
            return []
        return list(value)

    def choice(self, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
        value = self.string(name)
        if value is None:
            return default
        if value not in choices:
            self.problem(f"{self.key(name)}: {value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def parsed(self, name: str, parse: Callable[[str], T]) -> T | None:
        """A string option converted by `parse`, whose ValueError becomes a problem."""
        value = self.string(name)
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            self.problem(f"{self.key(name)}: {exc}")
            return None

    def duration(self, name: str, default: float, minimum: float = 0.0) -> float:
        """A duration string in seconds; durations below `minimum` are problems."""
        seconds = self.parsed(name, parse_duration)
        if seconds is None:
            return default
        if seconds < minimum:
            self.problem(f"{self.key(name)}: must be at least {minimum:g}s")
            return default
        return seconds

    def labeled_blocks(self, name: str) -> list[tuple[str, ConfigReader]]:
        """Blocks written `name "label" { ... }`, in the order they appear.

        pyhcl gives {label: body} (JSON configurations may also give a list of such
        objects). Callers finish() each reader, so unknown options in a block are named.
        """
        value = self._take(name)
        if value is None:
            return []
        groups = value if isinstance(value, list) else [value]
        blocks: list[tuple[str, ConfigReader]] = []
        for group in groups:
            if not isinstance(group, dict) or not all(isinstance(v, dict) for v in group.values()):
                self.problem(f'{self.key(name)}: expected labeled blocks: {name} "label" {{ ... }}')
                return []
            for label, body in group.items():
                if any(label == seen for seen, _ in blocks):
                    self.problem(f"{self.key(name)}: {label!r} is configured twice")
                    continue
                reader = ConfigReader(body, self._problems, prefix=f"{self.key(name)}.{label}.")
                blocks.append((label, reader))
        return blocks

    def block(self, name: str) -> ConfigReader | None:
        """A nested block (`name { ... }`); repeated blocks are a problem."""
        value = self._take(name)
        if value is None:
            return None
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
            value = value[0]
        if not isinstance(value, dict):
            self._wrong_type(name, "a block", value)
            return None
        return ConfigReader(value, self._problems, prefix=f"{self.key(name)}.")

    def raw(self, name: str) -> Any:
        return self._take(name)

    def finish(self) -> None:
        """Report every key nobody asked for: a typo must not pass silently."""
        for name in sorted(set(self._data) - self._taken):
            self.problem(f"{self.key(name)}: unknown option")


def read_config(
    hcl_text: str, core: CoreConfig, build: Callable[[ConfigReader, CoreConfig], C]
) -> C:
    """Parse, build and check a configuration; raise ConfigProblems listing everything wrong.

    A rejected configuration is closed here: building it may have started watchers.
    """
    problems: list[str] = []
    if not core.trust_domain:
        problems.append("core configuration is missing the trust domain")
    reader = ConfigReader(parse_hcl(hcl_text), problems)
    result = build(reader, core)
    reader.finish()
    if problems:
        result.close()
        raise ConfigProblems(problems)
    return result
