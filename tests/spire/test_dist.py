"""The single-file executables of `make dist`, pinned by plugin_checksum in real SPIRE.

The checksum is only worth something if it covers the code SPIRE runs: these
executables carry the interpreter, every Python module and every native library, so
SPIRE's hash of the file is a hash of the plugin. Changing one byte must make SPIRE
refuse to start it; the file as built, with the checksum from SHA256SUMS, must attest.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.spire.conftest import dist_checksums
from tests.spire.harness import (
    Plugin,
    agent_id,
    attested,
    sha256_file,
    start_agent,
    start_daemon,
    start_server,
    wait_until,
    write_agent_config,
    write_server_config,
)

pytestmark = pytest.mark.spire
SERVER = "spire-tpm-attestor-server"
AGENT = "spire-tpm-attestor-agent"


def pinned(dist: Path, name: str) -> Plugin:
    """The executable as built, with the checksum SHA256SUMS gives for it."""
    return Plugin(dist / name, dist_checksums(dist)[name])


def one_byte_changed(dist: Path, name: str, into: Path) -> Path:
    """A copy of the executable with one bit flipped in its middle byte."""
    copy = into / name
    shutil.copy2(dist / name, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    return copy


def test_sha256sums_lists_each_executable(dist: Path) -> None:
    sums = dist_checksums(dist)
    assert set(sums) == {SERVER, AGENT}
    for name, digest in sums.items():
        assert hashlib.sha256((dist / name).read_bytes()).hexdigest() == digest
        assert os.access(dist / name, os.X_OK)


def test_pinned_executables_attest(
    spire_bin: Path,
    dist: Path,
    workdir: Path,
    ek_ca: TestCA,
    bare_swtpm: SWTPM,
    ek_certificate: x509.Certificate,
) -> None:
    pub_hash = ek_hash(ek_certificate.public_key())
    server = start_server(spire_bin, workdir, ek_ca, policy="cert", plugin=pinned(dist, SERVER))
    agent = start_agent(spire_bin, workdir, server, bare_swtpm.tcti, plugin=pinned(dist, AGENT))
    try:
        wait_until(attested(agent), agent, 120, "agent attestation through the executables")
        shown = server.cli("agent", "show", "-spiffeID", agent_id(pub_hash))
        assert shown.returncode == 0, shown.stderr
        assert f"tpm:pub_hash:{pub_hash}" in shown.stdout
        assert "tpm:ek:model:swtpm" in shown.stdout
        for daemon in (agent, server.daemon):
            # SPIRE warns when no checksum is configured; here one is, and it matched.
            assert "Plugin checksum not configured" not in daemon.log()
    finally:
        agent.stop()
        server.daemon.stop()
    for daemon in (agent, server.daemon):
        assert "plugin failed to exit gracefully" not in daemon.log()
    assert_no_leftovers(dist)


def test_spire_server_refuses_a_server_plugin_with_one_byte_changed(
    spire_bin: Path, dist: Path, workdir: Path, ek_ca: TestCA
) -> None:
    changed = one_byte_changed(dist, SERVER, workdir)
    assert sha256_file(changed) != dist_checksums(dist)[SERVER]
    config, _ = write_server_config(
        workdir, ek_ca, policy="cert", plugin=Plugin(changed, dist_checksums(dist)[SERVER])
    )
    daemon = start_daemon(
        [str(spire_bin / "spire-server"), "run", "-config", str(config)], workdir / "server.log"
    )
    try:
        assert daemon.process.wait(timeout=60) != 0
    finally:
        daemon.stop()
    log = daemon.log()
    assert "checksums did not match" in log, log[-3000:]
    assert not re.search(r'msg="Plugin loaded".*plugin_name=tpm', log)


def test_spire_agent_refuses_an_agent_plugin_with_one_byte_changed(
    spire_bin: Path, dist: Path, workdir: Path, ek_ca: TestCA, bare_swtpm: SWTPM
) -> None:
    server = start_server(spire_bin, workdir, ek_ca, policy="cert", plugin=pinned(dist, SERVER))
    try:
        bundle = server.cli("bundle", "show")
        (workdir / "bundle.pem").write_text(bundle.stdout)
        changed = one_byte_changed(dist, AGENT, workdir)
        config = write_agent_config(
            workdir,
            server.port,
            bare_swtpm.tcti,
            plugin=Plugin(changed, dist_checksums(dist)[AGENT]),
        )
        agent = start_daemon(
            [str(spire_bin / "spire-agent"), "run", "-config", str(config)], workdir / "agent.log"
        )
        try:
            assert agent.process.wait(timeout=60) != 0
        finally:
            agent.stop()
    finally:
        server.daemon.stop()
    log = agent.log()
    assert "checksums did not match" in log, log[-3000:]
    assert "Node attestation was successful" not in log
    assert server.decisions() == 0


def test_the_python_process_ends_with_its_launcher(dist: Path, tmp_path: Path) -> None:
    """SPIRE kills a plugin with SIGKILL (Pdeathsig, or a plugin that does not exit within
    2 s); the one-file launcher cannot pass that on, so the Python process it started must
    notice and end too, removing the directory the launcher unpacked."""
    env = dict(
        os.environ,
        NodeAttestor="NodeAttestor",
        PLUGIN_PROTOCOL_VERSIONS="1",
        TMPDIR=str(tmp_path),
    )
    launcher = subprocess.Popen(
        [str(dist / SERVER)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    assert launcher.stdout is not None
    try:
        assert launcher.stdout.readline().startswith(b"1|1|unix|")
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        assert len(children) == 1, children
        python = int(children[0])
        assert list(tmp_path.glob("_MEI*")), "the launcher unpacks into TMPDIR"
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 15
        while Path(f"/proc/{python}").exists() and not _is_zombie(python):
            assert time.monotonic() < deadline, "the plugin outlived its launcher"
            time.sleep(0.1)
    finally:
        launcher.kill()
        launcher.wait()
    deadline = time.monotonic() + 5
    while list(tmp_path.glob("_MEI*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(tmp_path.glob("_MEI*")), "the unpacked directory was left behind"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def assert_no_leftovers(dist: Path) -> None:
    """After SPIRE unloaded the plugins no process of these executables is left running."""
    running = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe = os.readlink(proc / "exe")
        except OSError:
            continue
        if exe.startswith(str(dist)):
            running.append((proc.name, exe))
    assert running == []
