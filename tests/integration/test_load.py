"""200 attestations at once through one real server plugin process, as one spire-server
connection carries them, all 200 holding their challenge together before any answers:
every one admitted, none UNAVAILABLE or RESOURCE_EXHAUSTED.
(Their latency, CPU and memory: `python -m tests.bench load`; the long run: `make soak`.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spire_tpm_attestor.runtime.host import PluginProcess
from tests.bench.load.concurrent import AT_ONCE, admissions, burst
from tests.bench.load.driver import unexpected
from tests.bench.load.fleet import Fleet, Known
from tests.bench.load.soak import MIX, soak_figures
from tests.integration.plugins import audit_line_after, audit_lines


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    made = Fleet(Path(tmp_path_factory.mktemp("fleet")))
    yield made
    made.close()


@pytest.mark.parametrize("known", [Known.CHAIN, Known.HASH_PATH, Known.HTTP], ids=str)
def test_200_attestations_at_once_are_all_admitted(
    server: PluginProcess, fleet: Fleet, known: Known
) -> None:
    jobs = admissions(fleet, known, AT_ONCE)
    server.configure(fleet.hcl(known))
    seen = len(audit_lines(server))
    outcomes, figures = burst(server, jobs, held=True)
    assert unexpected(outcomes) == []
    assert figures["admitted"] == AT_ONCE
    # The plugin's own account: one admitted line per node, and not a line more.
    audit_line_after(server, seen + AT_ONCE - 1)
    decided = audit_lines(server)[seen:]
    assert sorted(line["ek_hash"] for line in decided) == sorted(job.node.pub_hash for job in jobs)
    assert {line["decision"] for line in decided} == {"admitted"}


def test_a_mixed_run_ends_every_stream_as_it_should_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    """The soak's mix, briefly, on a fresh process: new and re-attesting nodes admitted,
    unknown CA, wrong secret and garbage refused with their statuses, cancelled and
    silent streams ended; no thread or descriptor per stream stays behind."""
    figures = soak_figures(tmp_path, attestations=600, warmup=100, every=100)
    assert figures["unexpected_first"] == []
    assert {kind.split(":")[0] for kind in figures["outcomes"]} == set(MIX)
    assert figures["fds_end"] - figures["fds_after_warmup"] < 5
    assert figures["threads_end"] - figures["threads_after_warmup"] < 5
