"""Reading a plugin's configuration the way an operator has it: plugin data alone (as in
`plugin_data_file`) or a whole spire-agent.conf / spire-server.conf, whose NodeAttestor
block is taken."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spire_tpm_attestor.runtime.config import ConfigProblems, parse_hcl


class PluginConfigFile:
    """A plugin's configuration: either plugin data alone (as in `plugin_data_file`) or a
    whole spire-agent/spire-server config whose NodeAttestor block is taken."""

    def __init__(self, trust_domain: str, plugin_data: str, plugin_cmd: str | None) -> None:
        self.trust_domain = trust_domain
        self.plugin_data = plugin_data
        self.plugin_cmd = plugin_cmd

    @classmethod
    def read(cls, path: str, default_trust_domain: str = "example.org") -> PluginConfigFile:
        text = Path(path).read_text()
        document = parse_hcl(text)
        if "plugins" not in document:
            return cls(default_trust_domain, text, None)
        trust_domain = default_trust_domain
        for section in ("server", "agent"):
            block = _single(document.get(section))
            if isinstance(block, dict) and isinstance(block.get("trust_domain"), str):
                trust_domain = block["trust_domain"]
        attestors = _single(_single(document["plugins"]).get("NodeAttestor"))
        if not isinstance(attestors, dict) or not attestors:
            raise ConfigProblems([f"{path}: no NodeAttestor plugin in the plugins block"])
        body = next(iter(attestors.values()))
        body = _single(body)
        data: Any = body.get("plugin_data")
        if body.get("plugin_data_file"):
            plugin_data = Path(body["plugin_data_file"]).read_text()
        else:
            # pyhcl reads JSON as HCL, so the block can travel as JSON text.
            plugin_data = json.dumps(_single(data)) if data else ""
        return cls(trust_domain, plugin_data, body.get("plugin_cmd"))


def _single(value: Any) -> Any:
    return value[0] if isinstance(value, list) and len(value) == 1 else value
