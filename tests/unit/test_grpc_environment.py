"""The gRPC experiments the plugin chooses for itself, before grpcio is imported.

That grpcio still knows the experiment is checked where the plugins run: grpcio writes
"Unknown experiment" on stderr, which tests/plugin/test_runtime.py refuses (every
stderr line must be hclog JSON).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from spire_tpm_attestor.runtime.grpc_environment import POLLED_LISTENER, choose_grpc_experiments


def test_the_polled_listener_is_chosen_when_nothing_is_set() -> None:
    environ: dict[str, str] = {}
    choose_grpc_experiments(environ)
    assert environ == {"GRPC_EXPERIMENTS": POLLED_LISTENER}


def test_the_operators_other_experiments_are_kept() -> None:
    environ = {"GRPC_EXPERIMENTS": "-event_engine_client"}
    choose_grpc_experiments(environ)
    assert environ["GRPC_EXPERIMENTS"] == f"-event_engine_client,{POLLED_LISTENER}"


@pytest.mark.parametrize("chosen", ["event_engine_listener", "-event_engine_listener,foo"])
def test_the_operators_own_choice_of_the_listener_stands(chosen: str) -> None:
    environ = {"GRPC_EXPERIMENTS": chosen}
    choose_grpc_experiments(environ)
    assert environ["GRPC_EXPERIMENTS"] == chosen


@pytest.mark.parametrize("module", ["server_plugin.main", "agent_plugin.main"])
def test_the_entry_points_import_grpc_only_after_choosing(module: str) -> None:
    # grpcio reads GRPC_EXPERIMENTS once, at import: a main module that imported grpc
    # itself would make the choice too late.
    code = f"import sys, {module}; assert 'grpc' not in sys.modules, 'grpc imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
