"""Agent ID paths: every fact lands in exactly one clean segment below /spire/agent/."""

from __future__ import annotations

import pytest

from spire_tpm_attestor.identity import AgentPathTemplate, TemplateError

FACTS = {"PluginName": "tpm", "PubHash": "ab" * 32}


def render(template: str, **facts: str) -> str:
    return AgentPathTemplate.parse(template).render({**FACTS, **facts})


def test_default_and_named_paths() -> None:
    assert render("{{ .PluginName }}/{{ .PubHash }}") == "/spire/agent/tpm/" + "ab" * 32
    assert render("tpm/{{ .Name }}", Name="rack12-node_07.a") == "/spire/agent/tpm/rack12-node_07.a"
    assert render("tpm/node-{{ .Name }}", Name="7") == "/spire/agent/tpm/node-7"


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".",
        "node7\n",  # `$` would have let this through
        "node7\r",
        "\nnode7",
        "a/b",
        "/x",  # x, /x and x/ would all have rendered the same path
        "x/",
        "a//b",
        "../etc",
        "nöde7",
        "node 7",
        "node\x007",
    ],
)
def test_values_that_are_not_one_clean_segment_are_refused(name: str) -> None:
    with pytest.raises(TemplateError, match="Name"):
        render("tpm/{{ .Name }}", Name=name)


def test_a_missing_or_empty_value_is_refused() -> None:
    with pytest.raises(TemplateError, match="not known"):
        render("tpm/{{ .Name }}")
    with pytest.raises(TemplateError, match="not known"):
        render("tpm/{{ .Name }}", Name="")


@pytest.mark.parametrize(
    "template", ["tpm//{{ .PubHash }}", "tpm/./{{ .PubHash }}", "tpm/../{{ .PubHash }}", "a\n"]
)
def test_templates_that_are_not_a_clean_path_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        AgentPathTemplate.parse(template)
