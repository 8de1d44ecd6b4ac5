"""examples/monitoring/: the alert rules are valid, fire on the series they are about
(promtool, from Debian's `prometheus` package), and name only metrics the plugins have."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import agent_plugin.metrics
import server_plugin.metrics
import spire_tpm_attestor.runtime.plugin
from spire_tpm_attestor.runtime.metrics import Counter, Histogram, declared

MONITORING = Path(__file__).parents[2] / "examples" / "monitoring"
# Imported for the metrics they declare.
DECLARING = (agent_plugin.metrics, server_plugin.metrics, spire_tpm_attestor.runtime.plugin)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    if executable is None:
        pytest.skip(
            "promtool is not installed (apt-get install --no-install-recommends prometheus); "
            "not in the Makefile's packages: the package starts a Prometheus server"
        )
    return subprocess.run(
        [executable, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120
    )


def test_the_rules_and_the_scrape_configuration_are_valid() -> None:
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_each_alert_fires_on_its_series_and_not_before() -> None:
    run = promtool("test", "rules", "alerts_test.yml")
    assert run.returncode == 0, run.stdout + run.stderr


def exported_names() -> set[str]:
    names: set[str] = set()
    for metric in declared():
        if isinstance(metric, Counter):
            names.add(metric.name)
        elif isinstance(metric, Histogram):
            names.update(metric.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(metric.name)
    return names


def test_the_rules_name_only_metrics_the_plugins_export() -> None:
    named = set(re.findall(r"spire_tpm_attestor_\w+", (MONITORING / "alerts.yml").read_text()))
    assert named
    assert named <= exported_names(), named - exported_names()


def test_the_readme_lists_every_metric() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [
        m.name
        for m in declared()
        if f"`{m.name.removeprefix('spire_tpm_attestor_')}`" not in readme
    ]
    assert missing == []
