"""The README's option tables, generated from the options' declarations.

Each table sits between `<!-- options: NAME -->` and `<!-- end options -->` in the
README; `make docs` (python -m tests.readme_options) rewrites them, and
tests/unit/test_readme_options.py fails when the README is not up to date.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent_plugin.config import AGENT_OPTIONS
from server_plugin.allowlist.config import HTTP_OPTIONS
from server_plugin.config import SERVER_OPTIONS
from server_plugin.ek_sources import AIA_FETCH_OPTIONS, EK_CERT_DOWNLOAD_OPTIONS
from server_plugin.event_log_policy import POLICY_RULES
from spire_tpm_attestor.runtime.config import Options, options_table
from spire_tpm_attestor.runtime.observability import OBSERVABILITY_OPTIONS

README = Path(__file__).parents[1] / "README.md"
TABLES: dict[str, Options] = {
    "agent": AGENT_OPTIONS,
    "server": SERVER_OPTIONS,
    "http": HTTP_OPTIONS,
    "ek_aia_fetch": AIA_FETCH_OPTIONS,
    "ek_cert_download": EK_CERT_DOWNLOAD_OPTIONS,
    "event_log_policy": POLICY_RULES,
    "observability": OBSERVABILITY_OPTIONS,
}
_TABLE = re.compile(r"(<!-- options: (\w+) -->\n).*?(<!-- end options -->)", re.DOTALL)


def with_tables(readme: str) -> str:
    """`readme` with every marked table rendered from its declarations."""
    found: list[str] = []

    def render(match: re.Match[str]) -> str:
        found.append(match[2])
        return match[1] + options_table(TABLES[match[2]]) + match[3]

    text = _TABLE.sub(render, readme)
    if sorted(found) != sorted(TABLES):
        raise ValueError(f"the README marks tables {sorted(found)}, expected {sorted(TABLES)}")
    return text


if __name__ == "__main__":
    README.write_text(with_tables(README.read_text()))
