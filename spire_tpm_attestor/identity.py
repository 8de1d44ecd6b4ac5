"""SPIFFE IDs and selectors from attested facts (README: "SPIFFE IDs and selectors")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_PLUGIN_NAME = "tpm"
DEFAULT_AGENT_PATH_TEMPLATE = "{{ .PluginName }}/{{ .PubHash }}"
AGENT_PATH_PREFIX = "/spire/agent/"
TEMPLATE_FIELDS = (
    "PluginName",
    "PubHash",
    "EKCertSerial",
    "Name",
    "DevIDSubjectCN",
    "DevIDSerialNumber",
    "DevIDFingerprint",
)

_PLACEHOLDER = re.compile(r"\{\{\s*\.([A-Za-z][A-Za-z0-9]*)\s*\}\}")
# SPIFFE path segments: letters, digits, dot, dash, underscore (SPIFFE ID spec §2.2).
# Used with fullmatch: `$` would also match before a trailing newline.
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class TemplateError(ValueError):
    """The template is malformed, or a fact it needs is missing for this node."""


@dataclass(frozen=True)
class AgentPathTemplate:
    """SPIRE's `{{ .Field }}` placeholder syntax, rendered below /spire/agent/."""

    text: str

    @classmethod
    def parse(cls, text: str) -> AgentPathTemplate:
        leftover = _PLACEHOLDER.sub("", text)
        if "{{" in leftover or "}}" in leftover:
            raise TemplateError(f"{text!r}: only {{{{ .Field }}}} placeholders are supported")
        for field in _PLACEHOLDER.findall(text):
            if field not in TEMPLATE_FIELDS:
                raise TemplateError(
                    f"{text!r}: unknown field .{field} (known: {', '.join(TEMPLATE_FIELDS)})"
                )
        template = cls(text)
        template.render({field: "x" for field in TEMPLATE_FIELDS})  # shape check
        return template

    def fields(self) -> set[str]:
        return set(_PLACEHOLDER.findall(self.text))

    def render(self, facts: Mapping[str, str | None]) -> str:
        """The agent ID path, always under /spire/agent/ with clean segments."""

        def substitute(match: re.Match[str]) -> str:
            field = match.group(1)
            value = facts.get(field)
            if not value:
                raise TemplateError(
                    f"agent_path_template needs .{field}, which is not known for this node"
                )
            # A value is part of one segment, never a path: `x`, `/x` and `x/` must not
            # render the same ID, nor a value climb out with `..`.
            if value in (".", "..") or not _SEGMENT.fullmatch(value):
                raise TemplateError(
                    f"agent_path_template: .{field} is {value!r}, which is not one clean "
                    "SPIFFE path segment (letters, digits, '.', '-', '_')"
                )
            return value

        path = _PLACEHOLDER.sub(substitute, self.text).strip("/")
        segments = path.split("/")
        for segment in segments:
            if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
                raise TemplateError(
                    f"agent_path_template renders {path!r}, which is not a clean SPIFFE path "
                    "below /spire/agent/"
                )
        return AGENT_PATH_PREFIX + path


def agent_spiffe_id(trust_domain: str, path: str) -> str:
    return f"spiffe://{trust_domain}{path}"


def selector_safe(value: str) -> str:
    """Selector values are `kind:value`; keep them on one line and printable."""
    if value.isprintable():  # the usual case, without a pass per character
        return value
    return "".join(ch if ch.isprintable() else "_" for ch in value)
