"""The configuration examples stay in step with the plugins' options.

On this machine the examples' paths (/etc/spire/..., /var/lib/spire/...) do not exist,
so the only problems allowed are missing files: an unknown option, a wrong type or a
policy that makes no sense would show up here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent_plugin.config import build_agent_config
from server_plugin.config import build_server_config
from spire_tpm_attestor.cli.spire_config import PluginConfigFile
from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig

EXAMPLES = Path(__file__).parents[2] / "examples"
MISSING_PATH = ("No such file or directory", "is not a directory")
CASES: dict[str, Callable[[str, CoreConfig], Any]] = {
    "server.conf": build_server_config,
    "server-plugin-data.hcl": build_server_config,
    "server-plugin-data-fetch.hcl": build_server_config,
    "allowlist/server-plugin-data.hcl": build_server_config,
    "agent.conf": build_agent_config,
    "agent-plugin-data.hcl": build_agent_config,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_has_no_problem_but_missing_paths(name: str) -> None:
    example = PluginConfigFile.read(str(EXAMPLES / name))
    try:
        CASES[name](example.plugin_data, CoreConfig(example.trust_domain)).close()
    except ConfigProblems as problems:
        unexpected = [p for p in problems.problems if not any(m in p for m in MISSING_PATH)]
        assert unexpected == []


def test_the_example_event_log_policy_parses() -> None:
    from server_plugin.event_log_policy import load_event_log_policy_file

    policy = load_event_log_policy_file(str(EXAMPLES / "event-log-policy.hcl"))
    assert policy.require_event_log and policy.require_secure_boot
    assert policy.allowed_db is not None and len(policy.allowed_db) == 2
