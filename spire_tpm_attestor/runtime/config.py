"""Reading plugin configuration: HCL v1 text from SPIRE into typed values.

One `ConfigReader` walks the parsed HCL, takes each option with its expected type,
and collects *every* problem instead of stopping at the first, so `Configure` can
reject with all of them at once and `Validate` can return one note per problem.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from spire_tpm_attestor.files import FileTooLarge, read_bounded


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
_parser: Any = None  # hcl.parser.HclParser, imported on the first configuration


def _load_hcl(text: str) -> Any:
    """`hcl.loads`, but with one parser: pyhcl builds its parse tables anew for every
    parser, which costs ~20 ms on each Configure, Validate and reload."""
    global _parser
    import hcl.api  # here, not before the go-plugin handshake
    from hcl.parser import HclParser

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


def read_hcl_file(path: str, max_size: int) -> dict[str, Any]:
    """An HCL or JSON document from a file of at most `max_size` bytes (a policy).

    OSError passes through; a file too large or not valid is ConfigProblems naming it."""
    try:
        data = read_bounded(path, max_size)
    except FileTooLarge as exc:
        raise ConfigProblems([str(exc)]) from None
    try:
        return parse_hcl(data.decode("utf-8"))
    except (ConfigProblems, UnicodeDecodeError) as exc:
        raise ConfigProblems([f"{path}: {exc}"]) from None


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


OPTION_TYPES = ("string", "boolean", "integer", "duration", "strings", "block", "blocks")
OptionDefault = str | bool | int | float | None


@dataclass(frozen=True)
class Option:
    """One configuration option, declared once.

    The reader takes an option only by its declaration (so it reads the declared type
    and returns the declared default), the unknown-key check knows the declared names,
    and the README's option tables are generated from the declarations (`make docs`).
    `type` is one of OPTION_TYPES: "strings" is a string or a list of strings, "block"
    a `name { ... }` block, "blocks" labeled blocks `name "label" { ... }`.
    """

    name: str
    type: str
    meaning: str  # Markdown, as the README shows it
    default: OptionDefault = None  # what the reader returns when the option is absent
    default_text: str = ""  # the README's default when `default` does not say it

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name}: type {self.type!r} is not in {OPTION_TYPES}")

    def shown_name(self) -> str:
        if self.type == "blocks":
            return f'`{self.name} "<label>" {{ ... }}`'
        return f"`{self.name}`"

    def shown_default(self) -> str:
        if self.default_text:
            return self.default_text
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return "`true`" if self.default else "`false`"
        if self.type == "duration" and isinstance(self.default, int | float):
            return f"`{format_duration(self.default)}`"
        return f"`{self.default}`"


Options = Mapping[str, Option]


def declare(*options: Option) -> dict[str, Option]:
    """A table of options by name, in the order the README shows them."""
    table = {option.name: option for option in options}
    if len(table) != len(options):
        raise ValueError("an option is declared twice")
    return table


def format_duration(seconds: float) -> str:
    """How a default duration is written: whole hours as "1h", else seconds."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    return f"{seconds:g}s"


def options_table(options: Options) -> str:
    """The README's Markdown table of `options`."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    rows.extend(
        f"| {option.shown_name()} | {option.shown_default()} | {option.meaning} |"
        for option in options.values()
    )
    return "\n".join(rows) + "\n"


class ConfigReader:
    """Takes declared options out of one HCL object, recording problems under `prefix`."""

    def __init__(
        self,
        data: dict[str, Any],
        problems: list[str],
        options: Options,
        prefix: str = "",
        notes: list[str] | None = None,
    ) -> None:
        self._data = data
        self._problems = problems
        self._options = options
        self._prefix = prefix
        self.notes: list[str] = [] if notes is None else notes

    def problem(self, message: str) -> None:
        self._problems.append(message)

    def note(self, message: str) -> None:
        """Something the configuration leaves out without being wrong, for Validate."""
        self.notes.append(message)

    def key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def declaring(self, options: Options) -> ConfigReader:
        """This reader with more options declared (a block whose type decides the rest)."""
        return ConfigReader(
            self._data, self._problems, {**self._options, **options}, self._prefix, self.notes
        )

    def _declared(self, name: str, type_: str | None = None) -> Option:
        """The declaration of `name`; reading an undeclared option, or as another type,
        is a bug in the plugin, never a configuration problem."""
        option = self._options.get(name)
        if option is None or (type_ is not None and option.type != type_):
            raise LookupError(f"{self.key(name)} is not declared as a {type_ or 'option'}")
        return option

    def _take(self, name: str, type_: str) -> tuple[Any, Any]:
        """(the value written, or None; the declared default)."""
        return self._data.get(name), self._declared(name, type_).default

    def _wrong_type(self, name: str, expected: str, value: Any) -> None:
        self.problem(f"{self.key(name)}: expected {expected}, got {_type_name(value)}")

    def has(self, name: str) -> bool:
        self._declared(name)
        return name in self._data

    def string(self, name: str) -> str | None:
        value, default = self._take(name, "string")
        if value is None:
            return cast(str | None, default)
        if not isinstance(value, str):
            self._wrong_type(name, "a string", value)
            return cast(str | None, default)
        if not self._plain_text(name, value):
            return cast(str | None, default)
        return value

    def _plain_text(self, name: str, *values: str) -> bool:
        """No option's value holds a NUL or a lone surrogate (as is, or escaped in a JSON
        configuration): the OS refuses either in a path with ValueError or
        UnicodeEncodeError, where a problem must say so."""
        for value in values:
            if "\x00" in value:
                self.problem(f"{self.key(name)}: holds a NUL character")
                return False
            if not value.isascii():
                try:
                    value.encode()
                except UnicodeEncodeError:
                    self.problem(f"{self.key(name)}: holds a lone surrogate, not a character")
                    return False
        return True

    def boolean(self, name: str) -> bool:
        value, default = self._take(name, "boolean")
        if value is None:
            return bool(default)
        if not isinstance(value, bool):
            self._wrong_type(name, "a boolean (true or false)", value)
            return bool(default)
        return value

    def integer(self, name: str, minimum: int, maximum: int | None = None) -> int:
        value, default = self._take(name, "integer")
        default = cast(int, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong_type(name, "an integer", value)
            return default
        if value < minimum or (maximum is not None and value > maximum):
            self.problem(f"{self.key(name)}: {value} is outside {minimum}..{maximum}")
            return default
        return value

    def string_list(self, name: str) -> list[str]:
        value, _ = self._take(name, "strings")
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._wrong_type(name, "a list of strings", value)
            return []
        return list(value) if self._plain_text(name, *value) else []

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self.string(name)
        if value is None or value in choices:
            return value
        self.problem(f"{self.key(name)}: {value!r} is not one of {', '.join(choices)}")
        return cast(str | None, self._declared(name).default)

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

    def duration(self, name: str, minimum: float) -> float:
        """A duration string in seconds; durations below `minimum` are problems."""
        value, default = self._take(name, "duration")
        default = cast(float, default)
        if value is None:
            return default
        if not isinstance(value, str):
            self._wrong_type(name, "a string", value)
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(f"{self.key(name)}: {exc}")
            return default
        if seconds < minimum:
            self.problem(f"{self.key(name)}: must be at least {minimum:g}s")
            return default
        return seconds

    def labeled_blocks(self, name: str, options: Options) -> list[tuple[str, ConfigReader]]:
        """Blocks written `name "label" { ... }`, in the order they appear, each read
        with `options` declared.

        pyhcl gives {label: body} (JSON configurations may also give a list of such
        objects). Callers finish() each reader, so unknown options in a block are named.
        """
        value, _ = self._take(name, "blocks")
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
                prefix = f"{self.key(name)}.{label}."
                reader = ConfigReader(body, self._problems, options, prefix, self.notes)
                blocks.append((label, reader))
        return blocks

    def block(self, name: str, options: Options) -> ConfigReader | None:
        """A block written `name { ... }`, read with `options` declared; None when absent.
        The caller finish()es it, so unknown options in the block are named."""
        value, _ = self._take(name, "block")
        if value is None:
            return None
        if isinstance(value, list) and len(value) == 1:
            value = value[0]  # pyhcl's form of one block written with a nested block
        if not isinstance(value, dict):
            self._wrong_type(name, "a block: " + name + " { ... }", value)
            return None
        return ConfigReader(value, self._problems, options, f"{self.key(name)}.", self.notes)

    def raw(self, name: str) -> Any:
        """A block option as written, for its own parser to judge."""
        value, _ = self._take(name, "block")
        return value

    def finish(self) -> None:
        """Report every key that is not declared: a typo must not pass silently."""
        for name in sorted(set(self._data) - set(self._options)):
            self.problem(f"{self.key(name)}: unknown option")


def read_config(
    hcl_text: str,
    core: CoreConfig,
    options: Options,
    build: Callable[[ConfigReader, CoreConfig], C],
) -> C:
    """Parse, build and check a configuration; raise ConfigProblems listing everything wrong.

    Building opens nothing (no watch, no thread, no request); a rejected configuration
    is still closed here, for whatever its build loaded.
    """
    problems: list[str] = []
    if not core.trust_domain:
        problems.append("core configuration is missing the trust domain")
    reader = ConfigReader(parse_hcl(hcl_text), problems, options)
    result = build(reader, core)
    reader.finish()
    if problems:
        result.close()
        raise ConfigProblems(problems)
    return result
