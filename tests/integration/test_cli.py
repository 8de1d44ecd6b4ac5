"""The operator CLI: `hash` and `check` against swtpm and the real plugin processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from spire_tpm_attestor import __version__
from spire_tpm_attestor.ek_download import amd_ek_path, intel_ek_path
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM

CLI = str(Path(sys.executable).parent / "spire-tpm-attestor")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, check=False)


def check(agent_config: Path, server_config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        "check", "--agent-config", str(agent_config), "--server-config", str(server_config), *extra
    )


def test_version() -> None:
    result = run("version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"spire-tpm-attestor {__version__}"


@pytest.mark.swtpm
def test_hash_agrees_across_certificate_public_key_and_tpm(
    bare_swtpm: SWTPM, ek_certificate: x509.Certificate, tmp_path: Path
) -> None:
    expected = ek_hash(ek_certificate.public_key())
    (tmp_path / "ek.pem").write_bytes(ek_certificate.public_bytes(Encoding.PEM))
    (tmp_path / "ek.der").write_bytes(ek_certificate.public_bytes(Encoding.DER))
    public = ek_certificate.public_key()
    (tmp_path / "pub.pem").write_bytes(
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "agent.hcl").write_text(f'tcti = "{bare_swtpm.tcti}"\n')
    for option, name in (
        ("--certificate", "ek.pem"),
        ("--certificate", "ek.der"),
        ("--public-key", "pub.pem"),
        ("--agent-config", "agent.hcl"),
    ):
        result = run("hash", option, str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected, (option, name)


@pytest.mark.swtpm
def test_hash_urls_name_the_manufacturer_services(
    bare_swtpm: SWTPM, ek_certificate: x509.Certificate, tmp_path: Path
) -> None:
    key = ek_certificate.public_key()
    (tmp_path / "ek.pem").write_bytes(ek_certificate.public_bytes(Encoding.PEM))
    result = run("hash", "--urls", "--certificate", str(tmp_path / "ek.pem"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        ek_hash(key),
        f"intel: https://ekop.intel.com/ekcertservice/{intel_ek_path(key)}",
        f"amd: https://ftpm.amd.com/pki/aia/{amd_ek_path(key)}",
    ]
    # From a TPM, only its own manufacturer's service: swtpm ("IBM") has none.
    (tmp_path / "agent.hcl").write_text(f'tcti = "{bare_swtpm.tcti}"\n')
    result = run("hash", "--urls", "--agent-config", str(tmp_path / "agent.hcl"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [ek_hash(key)]


def test_hash_of_a_tpm_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("tpm2_pytss")
    (tmp_path / "agent.hcl").write_text('tcti = "swtpm:host=127.0.0.1,port=1"\n')
    result = run("hash", "--agent-config", str(tmp_path / "agent.hcl"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: TPM (swtpm:host=127.0.0.1,port=1)")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_hash_of_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run("hash", "--certificate", str(tmp_path / "nope.pem"))
    assert result.returncode == 2
    assert "nope.pem" in result.stderr
    assert result.stdout == ""


@pytest.fixture
def allowlist(tmp_path: Path) -> Path:
    directory = tmp_path / "hashes"
    directory.mkdir()
    return directory


@pytest.mark.swtpm
def test_check_with_plugin_data_files(
    bare_swtpm: SWTPM,
    ek_certificate: x509.Certificate,
    ek_ca: TestCA,
    allowlist: Path,
    tmp_path: Path,
) -> None:
    pub_hash = ek_hash(ek_certificate.public_key())
    (allowlist / pub_hash).write_text('{"name": "node-1"}')
    (tmp_path / "agent.hcl").write_text(f'tcti = "{bare_swtpm.tcti}"\n')
    (tmp_path / "server.hcl").write_text(
        f'ek_policy = "cert_and_allowlist"\nek_ca_path = "{ek_ca.bundle_path}"\n'
        f'hash_path = "{allowlist}"\n'
    )
    result = check(
        tmp_path / "agent.hcl",
        tmp_path / "server.hcl",
        "--trust-domain",
        "corp.test",
    )
    assert result.returncode == 0, result.stderr
    assert f"spiffe_id: spiffe://corp.test/spire/agent/tpm/{pub_hash}" in result.stdout
    assert f"  pub_hash:{pub_hash}" in result.stdout
    assert "  name:node-1" in result.stdout


@pytest.mark.swtpm
def test_check_with_whole_spire_config_files(
    bare_swtpm: SWTPM, ek_certificate: x509.Certificate, ek_ca: TestCA, tmp_path: Path
) -> None:
    examples = Path(__file__).parents[2] / "examples"
    server_conf = (examples / "server.conf").read_text()
    server_conf = server_conf.replace('ek_policy = "cert_or_allowlist"', 'ek_policy = "cert"')
    server_conf = server_conf.replace('"/etc/spire/tpm/ek-ca"', f'"{ek_ca.bundle_path}"')
    server_conf = server_conf.replace('hash_path = "/var/lib/spire/tpm/hashes"', "")
    agent_conf = (
        (examples / "agent.conf")
        .read_text()
        .replace('# tcti = "device:/dev/tpmrm0"', f'tcti = "{bare_swtpm.tcti}"')
    )
    # The example's plugin_cmd points at an install location; use this checkout's.
    for side in ("server", "agent"):
        install = f"/opt/spire-tpm-attestor/bin/spire-tpm-attestor-{side}"
        here = str(Path(sys.executable).parent / f"spire-tpm-attestor-{side}")
        server_conf, agent_conf = (
            server_conf.replace(install, here),
            agent_conf.replace(install, here),
        )
    (tmp_path / "server.conf").write_text(server_conf)
    (tmp_path / "agent.conf").write_text(agent_conf)
    result = check(tmp_path / "agent.conf", tmp_path / "server.conf")
    assert result.returncode == 0, result.stderr
    pub_hash = ek_hash(ek_certificate.public_key())
    assert f"spiffe_id: spiffe://example.org/spire/agent/tpm/{pub_hash}" in result.stdout
    assert "  ek:model:swtpm" in result.stdout


@pytest.mark.swtpm
def test_check_names_the_failing_check(
    bare_swtpm: SWTPM, ek_certificate: x509.Certificate, allowlist: Path, tmp_path: Path
) -> None:
    (tmp_path / "agent.hcl").write_text(f'tcti = "{bare_swtpm.tcti}"\n')
    (tmp_path / "server.hcl").write_text(f'hash_path = "{allowlist}"\n')
    result = check(tmp_path / "agent.hcl", tmp_path / "server.hcl")
    assert result.returncode == 1
    assert "attestation failed in the server plugin: PERMISSION_DENIED" in result.stderr
    assert "is not in the allowlist" in result.stderr


def test_check_reports_a_refused_configuration(tmp_path: Path) -> None:
    (tmp_path / "agent.hcl").write_text('tcti = "swtpm:port=1"\n')
    (tmp_path / "server.hcl").write_text('ek_policy = "cert"\n')
    result = check(tmp_path / "agent.hcl", tmp_path / "server.hcl")
    assert result.returncode == 2
    assert "the server plugin refused its configuration" in result.stderr
    assert "needs ek_ca_path" in result.stderr


@pytest.mark.swtpm
def test_check_replays_the_event_log_and_writes_pcrs_for_inspect(
    bare_swtpm: SWTPM, ek_certificate: x509.Certificate, ek_ca: TestCA, tmp_path: Path
) -> None:
    from tests.eventlog_builder import uefi_log
    from tests.integration.platform_setup import measure_boot

    log = uefi_log().build()
    measure_boot(bare_swtpm.tcti, log)
    (tmp_path / "log").write_bytes(log.data)
    (tmp_path / "agent.hcl").write_text(
        f'tcti = "{bare_swtpm.tcti}"\nevent_log_path = "{tmp_path / "log"}"\n'
    )
    (tmp_path / "server.hcl").write_text(f'ek_ca_path = "{ek_ca.bundle_path}"\nevent_log = true\n')
    pcrs = tmp_path / "pcrs.json"
    result = check(tmp_path / "agent.hcl", tmp_path / "server.hcl", "--write-pcrs", str(pcrs))
    assert result.returncode == 0, result.stderr
    assert "  secureboot:enabled" in result.stdout
    assert "replays to this TPM's PCRs sha256 0, 1, 2, 3, 4, 5, 6, 7" in result.stdout
    # What check wrote is what inspect replays against.
    inspected = run("eventlog", "inspect", str(tmp_path / "log"), "--pcrs", str(pcrs))
    assert inspected.returncode == 0 and "replay: matches the PCRs given" in inspected.stdout

    (tmp_path / "log").write_bytes(uefi_log(secure_boot=False).build().data)
    # A server that does not ask for the log admits; check still reports the mismatch.
    (tmp_path / "server.hcl").write_text(f'ek_ca_path = "{ek_ca.bundle_path}"\n')
    result = check(tmp_path / "agent.hcl", tmp_path / "server.hcl")
    assert result.returncode == 0, result.stderr
    assert "REFUSED: event log does not match PCR sha256:7" in result.stdout
    inspected = run("eventlog", "inspect", str(tmp_path / "log"), "--pcrs", str(pcrs))
    assert inspected.returncode == 1 and "replay: MISMATCH" in inspected.stdout
