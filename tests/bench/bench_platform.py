"""Platform state and DevID: agent wall time with 0/8/24 PCRs and DevID, server CPU to verify."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server_plugin import attestation
from server_plugin.config import build_server_config
from spire_tpm_attestor import wire
from spire_tpm_attestor.cli.devid import create_devid_files
from spire_tpm_attestor.runtime.config import CoreConfig
from spire_tpm_attestor.runtime.host import (
    AGENT_HOST_SERVICES,
    SERVER_HOST_SERVICES,
    PluginProcess,
    relay_attestation,
)
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM, provision_ek_certificates
from tests.bench.measure import Figure, Stats, Table, ms, progress, require_swtpm

TRUST_DOMAIN = "example.org"
BIN = Path(sys.executable).parent
AGENT_ROUNDS = 20
SERVER_ROUNDS = 300
WARMUP = 5
PCRS = {"0 PCRs": [], "8 PCRs": [*range(8)], "24 PCRs": [*range(24)]}


@dataclass(frozen=True)
class Row:
    label: str
    pcrs: list[int]
    devid: bool


ROWS = [
    *(Row(label, pcrs, devid=False) for label, pcrs in PCRS.items()),
    Row("DevID, 0 PCRs", [], devid=True),
    Row("DevID, 8 PCRs", PCRS["8 PCRs"], devid=True),
    Row("DevID, 24 PCRs", PCRS["24 PCRs"], devid=True),
]


def _hcl(**options: object) -> str:
    return "\n".join(f"{key} = {json.dumps(value)}" for key, value in options.items())


def _devid_options(tpm: SWTPM, ca: TestCA, work: Path) -> dict[str, str]:
    """A DevID key made in the TPM (as `devid create` does) and certified by `ca`."""
    paths = create_devid_files(tpm.tcti, work / "devid", "ecc", None)
    key = serialization.load_pem_public_key(paths["spki"].read_bytes())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise RuntimeError("devid create made no P-256 key")
    chain = work / "devid" / "chain.pem"
    chain.write_bytes(ca.chain_pem(ca.issue_devid_certificate(key, "bench-node")))
    return {"devid_cert_path": str(chain), "devid_key_path": str(paths["pem"])}


def _server_options(ek_ca: TestCA, devid_ca: TestCA, row: Row) -> dict[str, object]:
    options: dict[str, object] = {"ek_ca_path": str(ek_ca.bundle_path)}
    if row.pcrs:
        options["pcr_selection"] = {"sha256": row.pcrs}
    if row.devid:
        options.update(devid_ca_path=str(devid_ca.root_path), require_devid=True)
    return options


def _agent_table(tpm: SWTPM, ek_ca: TestCA, devid_ca: TestCA, devid: dict[str, str]) -> Table:
    table = Table(
        f"one attestation through the real plugin processes on swtpm (RSA 2048 EK, P-256 AK; "
        f"wall ms, {AGENT_ROUNDS} per row after one warm-up)",
        ("quoted / proven", "n", "median", "p99", "max", "min"),
    )
    with (
        PluginProcess.start(
            [str(BIN / "spire-tpm-attestor-agent")], host_service_names=AGENT_HOST_SERVICES
        ) as agent,
        PluginProcess.start(
            [str(BIN / "spire-tpm-attestor-server")], host_service_names=SERVER_HOST_SERVICES
        ) as server,
    ):
        for row in ROWS:
            progress(f"attesting swtpm through the plugins: {row.label}")
            # An ECC AK: RSA key generation on swtpm varies by 100+ ms and would hide the rest.
            agent_options = {
                "tcti": tpm.tcti,
                "ak_algorithm": "ecc",
                **(devid if row.devid else {}),
            }
            agent.configure(_hcl(**agent_options), TRUST_DOMAIN)
            server.configure(_hcl(**_server_options(ek_ca, devid_ca, row)), TRUST_DOMAIN)
            relay_attestation(agent, server)  # warm-up
            samples = []
            for _ in range(AGENT_ROUNDS):
                started = time.perf_counter()
                result = relay_attestation(agent, server)
                samples.append(time.perf_counter() - started)
            expected = len(row.pcrs) + (4 if row.devid else 0)
            found = sum(s.startswith(("pcr:", "devid:")) for s in result.selectors)
            if found != expected:
                raise RuntimeError(f"{row.label}: {found} PCR/DevID selectors, not {expected}")
            stats = Stats.of(samples)
            table.record(
                Figure.of_stats(f"{row.label}: attestation through the plugins", stats, "ms", 1e3)
            )
            table.add(
                row.label,
                stats.count,
                ms(stats.median, 1),
                ms(stats.p99, 1),
                ms(stats.max, 1),
                ms(stats.min, 1),
            )
    table.note(
        "includes the server's checks and the gRPC relay; the agent's part is TPM work: EK "
        "CreatePrimary, AK Create + Load, salted session, ActivateCredential, Quote + "
        "PCR_Read (8 per call), DevID Load + Certify + Sign"
    )
    return table


def _server_table(tpm: SWTPM, ek_ca: TestCA, devid_ca: TestCA, devid: dict[str, str]) -> Table:
    """Server CPU per attestation on real evidence: the TPM answers every fresh challenge.

    One agent TPM session per row keeps its AK (as an agent with a persisted AK does), so
    each round costs the TPM only the answer; only the server's steps are timed.
    """
    from agent_plugin.config import build_agent_config
    from agent_plugin.plugin import answer_challenge, build_payload
    from agent_plugin.tpm import TPMSession

    table = Table(
        f"server CPU per attestation, in-process, on real swtpm evidence (thread CPU ms; "
        f"{SERVER_ROUNDS} attestations per row after {WARMUP} warm-up)",
        ("verified", "pay->chal p50", "p99", "resp->res p50", "p99", "total p50", "p99"),
    )
    core = CoreConfig(TRUST_DOMAIN)
    for row in ROWS:
        progress(f"server steps x {SERVER_ROUNDS} on swtpm answers: {row.label}")
        agent_config = build_agent_config(_hcl(tcti=tpm.tcti, **(devid if row.devid else {})), core)
        config = build_server_config(_hcl(**_server_options(ek_ca, devid_ca, row)), core)
        first, second = [], []
        try:
            with TPMSession.open(tpm.tcti) as session:
                payload = wire.encode(build_payload(session, agent_config))
                for round_number in range(WARMUP + SERVER_ROUNDS):
                    started = time.thread_time_ns()
                    evidence = attestation.check_payload(
                        config, attestation.decode_payload(payload)
                    )
                    challenge, pending = attestation.issue_challenge(config, evidence)
                    challenged = time.thread_time_ns()
                    answer = wire.encode(
                        answer_challenge(session, wire.decode_challenge(challenge), agent_config)
                    )
                    answered = time.thread_time_ns()
                    attested = attestation.verify_response(
                        config, pending, attestation.decode_response(answer)
                    )
                    attestation.agent_attributes(config, attested)
                    finished = time.thread_time_ns()
                    if round_number >= WARMUP:
                        first.append((challenged - started) / 1e9)
                        second.append((finished - answered) / 1e9)
        finally:
            config.close()
        totals = [a + b for a, b in zip(first, second, strict=True)]
        table.record(
            Figure.of(f"{row.label}: server CPU per attestation", totals, "ms", 1e3),
            Figure.of(f"{row.label}: payload -> challenge", first, "ms", 1e3),
            Figure.of(f"{row.label}: response -> result", second, "ms", 1e3),
        )
        table.add(
            row.label,
            *(
                ms(figure, 3)
                for samples in (first, second, totals)
                for figure in (Stats.of(samples).median, Stats.of(samples).p99)
            ),
        )
    table.note(
        "pay->chal: decode + EK/AK checks + EK chain (EC CA) + DevID chain and key + "
        "MakeCredential; resp->res: secret + quote signature/nonce/pcrDigest + DevID certify "
        "and signature + selectors"
    )
    return table


def _encryption_table(tpm: SWTPM, devid: dict[str, str]) -> Table:
    """What parameter encryption costs the agent: the four commands that carry secrets or
    proofs, with the salted session (started on the first of them) and without."""
    from agent_plugin.config import build_agent_config
    from agent_plugin.tpm import TPMSession
    from spire_tpm_attestor.tpm.credential import make_credential
    from spire_tpm_attestor.tpm.structures import parse_tpm2b_public

    table = Table(
        f"agent: ActivateCredential + Quote (8 PCRs) + Certify + Sign on swtpm, one TPM "
        f"session each (wall ms, {AGENT_ROUNDS} per row after one warm-up)",
        ("sessions", "n", "median", "p99", "max", "min"),
    )
    key = build_agent_config(_hcl(tcti=tpm.tcti, **devid), CoreConfig(TRUST_DOMAIN)).devid
    assert key is not None
    supports_aes_cfb = TPMSession._supports_aes_cfb
    try:
        for label, encrypted in (("salted, AES-128-CFB", True), ("password (no AES)", False)):
            progress(f"timing the agent's secret-bearing TPM commands: {label}")
            TPMSession._supports_aes_cfb = (  # type: ignore[method-assign]
                supports_aes_cfb if encrypted else (lambda self: False)
            )
            samples = []
            for _ in range(AGENT_ROUNDS + 1):
                with TPMSession.open(tpm.tcti, require_encryption=encrypted) as session:
                    ak = parse_tpm2b_public(session.create_ak("ecc"))
                    session.load_devid(key.public, key.private, key.parent_handle)
                    ek = parse_tpm2b_public(session.read_ek("ecc256").public)
                    blob, seed = make_credential(ek, ak.name(), bytes(32))
                    started = time.perf_counter()
                    session.activate_credential(blob, seed)
                    session.quote([("sha256", PCRS["8 PCRs"])], bytes(32))
                    session.certify_devid(bytes(32))
                    session.sign_with_devid(bytes(32))
                    samples.append(time.perf_counter() - started)
            stats = Stats.of(samples[1:])
            table.record(Figure.of_stats(f"secret-bearing TPM commands, {label}", stats, "ms", 1e3))
            table.add(
                label,
                stats.count,
                ms(stats.median, 1),
                ms(stats.p99, 1),
                ms(stats.max, 1),
                ms(stats.min, 1),
            )
    finally:
        TPMSession._supports_aes_cfb = supports_aes_cfb  # type: ignore[method-assign]
    table.note(
        "in-process TPMSession, ECC P-256 EK and AK; the salted row includes probing the "
        "TPM's algorithms and starting the session (salt encrypted to the EK)"
    )
    return table


def run() -> list[Table]:
    require_swtpm()

    with tempfile.TemporaryDirectory(prefix="bench-platform-") as workdir, SWTPM() as tpm:
        work = Path(workdir)
        ek_ca = TestCA.create(work / "ek-ca")
        devid_ca = TestCA.create(work / "devid-ca", name="Bench DevID")
        provision_ek_certificates(tpm.tcti, ek_ca, ["rsa2048"])
        devid = _devid_options(tpm, devid_ca, work)
        return [
            _agent_table(tpm, ek_ca, devid_ca, devid),
            _encryption_table(tpm, devid),
            _server_table(tpm, ek_ca, devid_ca, devid),
        ]
