"""Attestation cost: server CPU per attestation (in-process) and agent wall time on swtpm."""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from server_plugin import attestation
from server_plugin.config import ServerConfig, build_server_config
from spire_tpm_attestor import wire
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.pb.spire_server_nodeattestor_pb2 import AgentAttributes
from spire_tpm_attestor.runtime.config import CoreConfig
from spire_tpm_attestor.runtime.host import (
    AGENT_HOST_SERVICES,
    SERVER_HOST_SERVICES,
    PluginProcess,
    relay_attestation,
)
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM, provision_ek_certificates
from spire_tpm_attestor.tpm.structures import parse_tpm2b_public
from tests.bench.measure import (
    Figure,
    Stats,
    Table,
    median,
    mib,
    ms,
    one_cpu,
    ops_per_second,
    p99,
    progress,
    rate,
    require_swtpm,
    rss_bytes,
)

EK_ALGORITHMS = ("rsa2048", "ecc256", "ecc384")
AGENT_EK_ALGORITHMS = ("rsa2048", "ecc256")
AK_ALGORITHMS = ("rsa", "ecc")
ATTESTATIONS = 1000
WARMUP = 20
PROFILED = 200
AGENT_ROUNDS = 10
TARGET_SECONDS = 0.002  # the issue's target: server side < 2 ms at p50, RSA 2048 + chain
TARGET_CASE = ("rsa2048", "chain (EC CA), new nodes")
TRUST_DOMAIN = "example.org"
BIN = Path(sys.executable).parent

# Where the server spends its time, as (label, file suffix, function) in call order.
PROFILE_ROWS = (
    ("decode_payload", "server_plugin/attestation.py", "decode_payload"),
    ("parse_ek_public (+ EK template)", "server_plugin/checks.py", "parse_ek_public"),
    ("ek_hash_of", "server_plugin/checks.py", "ek_hash_of"),
    ("verify_ak_public", "server_plugin/checks.py", "verify_ak_public"),
    ("load_ek_certificate", "server_plugin/checks.py", "load_ek_certificate"),
    ("verify_eks_match", "server_plugin/checks.py", "verify_eks_match"),
    ("look_up_allowlist", "server_plugin/checks.py", "look_up_allowlist"),
    ("verify_ek_chain", "server_plugin/checks.py", "verify_ek_chain"),
    ("  signature checks (_signed_by)", "spire_tpm_attestor/py", "_signed_by"),
    ("  candidate sort (_candidates)", "spire_tpm_attestor/py", "_candidates"),
    ("issue_challenge", "server_plugin/attestation.py", "issue_challenge"),
    ("  make_credential", "spire_tpm_attestor/tpm/credential.py", "make_credential"),
    ("decode_response", "server_plugin/attestation.py", "decode_response"),
    ("verify_response", "server_plugin/attestation.py", "verify_response"),
    ("agent_attributes", "server_plugin/attestation.py", "agent_attributes"),
)


def _hcl(**options: object) -> str:
    return "\n".join(f"{key} = {json.dumps(value)}" for key, value in options.items())


def _payload(ek_public: bytes, ek_certificate: bytes, ak_public: bytes) -> bytes:
    return wire.encode(
        attestation_pb2.Payload(
            version=wire.PROTOCOL_VERSION,
            ek_public=ek_public,
            ek_certificate=ek_certificate,
            ak_public=ak_public,
        )
    )


def _response(secret: bytes) -> bytes:
    return wire.encode(
        attestation_pb2.ChallengeResponse(version=wire.PROTOCOL_VERSION, secret=secret)
    )


@dataclass(frozen=True)
class Captured:
    """What a real agent sends for one EK type: read from swtpm once."""

    algorithm: str
    ek_public: bytes
    ek_certificate: bytes  # as read from NV (issued by the EC test CA)
    ak_public: bytes


@dataclass(frozen=True)
class Case:
    ek: str
    trust: str
    config: ServerConfig
    payloads: tuple[bytes, ...]  # cycled; several when every attestation is a new node

    def payload(self, number: int) -> bytes:
        return self.payloads[number % len(self.payloads)]


@dataclass(frozen=True)
class CaseResult:
    case: Case
    challenge: list[float]  # payload -> challenge, CPU seconds
    result: list[float]  # response -> result, CPU seconds
    loop_seconds_per_attestation: float  # wall, pinned to one CPU

    @property
    def total(self) -> list[float]:
        return [a + b for a, b in zip(self.challenge, self.result, strict=True)]


def _attest(config: ServerConfig, payload: bytes) -> tuple[int, int, AgentAttributes]:
    """One attestation through the server's steps; CPU ns of each half.

    The response is built from the secret the server chose (outside the timed halves),
    so this measures the server's verification, not the TPM's.
    """
    started = time.thread_time_ns()
    evidence = attestation.check_payload(config, attestation.decode_payload(payload))
    _challenge, pending = attestation.issue_challenge(config, evidence)
    challenged = time.thread_time_ns()
    response = _response(pending.secret)
    answered = time.thread_time_ns()
    attested = attestation.verify_response(config, pending, attestation.decode_response(response))
    attributes = attestation.agent_attributes(config, attested)
    finished = time.thread_time_ns()
    return challenged - started, finished - answered, attributes


def _attest_untimed(config: ServerConfig, payload: bytes) -> None:
    evidence = attestation.check_payload(config, attestation.decode_payload(payload))
    _challenge, pending = attestation.issue_challenge(config, evidence)
    attested = attestation.verify_response(
        config, pending, attestation.decode_response(_response(pending.secret))
    )
    attestation.agent_attributes(config, attested)


def _measure(case: Case) -> CaseResult:
    for number in range(WARMUP):
        _, _, attributes = _attest(case.config, case.payload(number))
    if not attributes.spiffe_id.startswith(f"spiffe://{TRUST_DOMAIN}/spire/agent/"):
        raise RuntimeError(f"unexpected agent ID {attributes.spiffe_id}")
    challenge: list[float] = []
    result: list[float] = []
    for number in range(ATTESTATIONS):
        first, second, _ = _attest(case.config, case.payload(WARMUP + number))
        challenge.append(first / 1e9)
        result.append(second / 1e9)
    with one_cpu():
        started = time.perf_counter()
        for number in range(ATTESTATIONS):
            _attest_untimed(case.config, case.payload(WARMUP + ATTESTATIONS + number))
        loop = (time.perf_counter() - started) / ATTESTATIONS
    return CaseResult(case, challenge, result, loop)


def _profile(case: Case) -> Table:
    profiler = cProfile.Profile()
    profiler.enable()
    for number in range(PROFILED):
        _attest_untimed(case.config, case.payload(WARMUP + 2 * ATTESTATIONS + number))
    profiler.disable()
    entries = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    # (file, line, function) -> (primitive calls, calls, own time, cumulative time, callers)
    totals = [
        value[3] for key, value in entries.items() if key[2] == "_attest_untimed" and key[1] > 0
    ]
    total = sum(totals) / PROFILED
    table = Table(
        f"where the server's time goes: {case.ek} EK, {case.trust} "
        f"(cProfile, {PROFILED} attestations; the profiler inflates absolute times)",
        ("step", "calls/att", "us/att", "share"),
    )
    for label, file_suffix, function in PROFILE_ROWS:
        found = [
            value
            for key, value in entries.items()
            if key[0].endswith(file_suffix) and key[2] == function
        ]
        if not found:
            continue
        calls = sum(value[1] for value in found) / PROFILED
        cumulative = sum(value[3] for value in found) / PROFILED
        table.add(label, f"{calls:.1f}", f"{cumulative * 1e6:.0f}", f"{cumulative / total:.0%}")
    table.add("whole attestation (server steps)", "1.0", f"{total * 1e6:.0f}", "100%")
    return table


def _capture(tpm: SWTPM, ca: TestCA) -> dict[str, Captured]:
    """Reads EK, EK certificate and a fresh RSA AK per EK type, like the agent does.

    Each payload is checked once end to end: the TPM recovers the server's secret.
    """
    from agent_plugin.tpm import TPMSession  # needs tpm2-pytss

    config = build_server_config(_hcl(ek_ca_path=str(ca.bundle_path)), CoreConfig(TRUST_DOMAIN))
    captured: dict[str, Captured] = {}
    try:
        for algorithm in EK_ALGORITHMS:
            with TPMSession.open(tpm.tcti) as session:
                ek = session.read_ek(algorithm)
                if ek.certificate is None:
                    raise RuntimeError(f"swtpm has no {algorithm} EK certificate")
                ak_public = session.create_ak("rsa")
                payload = _payload(ek.public, ek.certificate, ak_public)
                evidence = attestation.check_payload(config, attestation.decode_payload(payload))
                challenge, pending = attestation.issue_challenge(config, evidence)
                decoded = wire.decode_challenge(challenge)
                secret = session.activate_credential(
                    decoded.credential_blob, decoded.encrypted_secret
                )
            if secret != pending.secret:
                raise RuntimeError(f"{algorithm}: swtpm did not recover the server's secret")
            captured[algorithm] = Captured(algorithm, ek.public, ek.certificate, ak_public)
    finally:
        config.close()
    return captured


def _cases(work: Path, captured: dict[str, Captured], ec_ca: TestCA, rsa_ca: TestCA) -> list[Case]:
    hashes = work / "hashes"
    hashes.mkdir()
    for algorithm, capture in captured.items():
        key = parse_tpm2b_public(capture.ek_public).public_key()
        entry = {"name": f"bench-{algorithm}", "labels": {"rack": "r1"}}
        (hashes / ek_hash(key)).write_text(json.dumps(entry))
    core = CoreConfig(TRUST_DOMAIN)
    configs = {
        "allowlist": build_server_config(_hcl(ek_policy="allowlist", hash_path=str(hashes)), core),
        "chain (EC CA)": build_server_config(
            _hcl(ek_policy="cert", ek_ca_path=str(ec_ca.bundle_path)), core
        ),
        "chain (RSA CA)": build_server_config(
            _hcl(ek_policy="cert", ek_ca_path=str(rsa_ca.bundle_path)), core
        ),
    }
    cases = []
    for algorithm, capture in captured.items():
        # The same EK, certified by the RSA CA: the key is the TPM's, only the issuer differs.
        ek_key = parse_tpm2b_public(capture.ek_public).public_key()
        rsa_issued = rsa_ca.issue_ek_certificate(ek_key).public_bytes(Encoding.DER)
        for trust, config in configs.items():
            certificate = rsa_issued if trust == "chain (RSA CA)" else capture.ek_certificate
            payload = _payload(capture.ek_public, certificate, capture.ak_public)
            cases.append(Case(algorithm, trust, config, (payload,)))
        # Signature checks are remembered per certificate, so a node seen before costs
        # less; here every attestation brings an EK certificate the server has not seen.
        fresh = tuple(
            _payload(
                capture.ek_public,
                ec_ca.issue_ek_certificate(ek_key).public_bytes(Encoding.DER),
                capture.ak_public,
            )
            for _ in range(WARMUP + 2 * ATTESTATIONS + PROFILED)  # each used once
        )
        cases.append(Case(algorithm, "chain (EC CA), new nodes", configs["chain (EC CA)"], fresh))
    return cases


def _server_table(results: list[CaseResult]) -> Table:
    table = Table(
        f"server CPU per attestation, in-process (thread CPU ms; {ATTESTATIONS} attestations "
        "per row after warm-up)",
        (
            "EK",
            "EK trust",
            "pay->chal p50",
            "p99",
            "resp->res p50",
            "p99",
            "total p50",
            "p99",
            "att/s 1/sum(p50)",
            "att/s loop",
        ),
    )
    for r in results:
        case = f"{r.case.ek}, {r.case.trust}"
        table.record(
            Figure.of(f"{case}: server CPU per attestation", r.total, "ms", 1e3),
            Figure.of(f"{case}: payload -> challenge", r.challenge, "ms", 1e3),
            Figure.of(f"{case}: response -> result", r.result, "ms", 1e3),
            Figure(
                f"{case}: attestations/s, loop on one CPU",
                ops_per_second(r.loop_seconds_per_attestation),
                "1/s",
            ),
        )
        table.add(
            r.case.ek,
            r.case.trust,
            ms(median(r.challenge), 3),
            ms(p99(r.challenge), 3),
            ms(median(r.result), 3),
            ms(p99(r.result), 3),
            ms(median(r.total), 3),
            ms(p99(r.total), 3),
            rate(ops_per_second(median(r.challenge) + median(r.result))),
            rate(ops_per_second(r.loop_seconds_per_attestation)),
        )
    table.note(
        "pay->chal = decode_payload + check_payload + issue_challenge; resp->res = "
        "decode_response + verify_response + agent_attributes (audit log line not included)"
    )
    table.note(
        "allowlist: ek_policy allowlist (flat directory, JSON entry); chain: ek_policy cert, "
        "ek_ca_path = root + intermediate of a P-256 (EC) or RSA 2048 (RSA) test CA; the EK "
        "certificate is checked against the EK under both"
    )
    table.note(
        "att/s loop: wall time of back-to-back attestations on one pinned CPU, single thread"
    )
    table.note(
        "chain rows repeat one node, whose signature checks the server remembers; "
        "'new nodes' brings a certificate never seen before each time (first attestations)"
    )
    target = [
        r for r in results if r.case.ek == TARGET_CASE[0] and r.case.trust.startswith("chain")
    ]
    figures = ", ".join(f"{ms(median(r.total), 3)} ms ({r.case.trust})" for r in target)
    met = all(median(r.total) < TARGET_SECONDS for r in target)
    table.note(
        f"target: server side < {ms(TARGET_SECONDS, 0)} ms p50 for an RSA 2048 EK with chain "
        f"verification: {'MET' if met else 'NOT MET'}: {figures}"
    )
    return table


def _transient_objects(tcti: str) -> int:
    """How many transient objects the TPM holds now (its first 64), whoever loaded them."""
    import tpm2_pytss as tss

    esapi = tss.ESAPI(tcti)
    try:
        _, data = esapi.get_capability(tss.TPM2_CAP.HANDLES, int(tss.TPM2_HC.TRANSIENT_FIRST), 64)
        return len(data.data.handles)
    finally:
        esapi.close()


def _wait_until_flushed(tcti: str, timeout: float = 5.0) -> float:
    """Seconds until the TPM holds no transient objects (0.0 if none were left)."""
    started = time.perf_counter()
    if not _transient_objects(tcti):
        return 0.0
    while _transient_objects(tcti):
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"the agent left TPM objects loaded for over {timeout} s")
        time.sleep(0.001)
    return time.perf_counter() - started


@contextmanager
def _plugins() -> Iterator[tuple[PluginProcess, PluginProcess]]:
    with ExitStack() as stack:
        agent = stack.enter_context(
            PluginProcess.start(
                [str(BIN / "spire-tpm-attestor-agent")], host_service_names=AGENT_HOST_SERVICES
            )
        )
        server = stack.enter_context(
            PluginProcess.start(
                [str(BIN / "spire-tpm-attestor-server")], host_service_names=SERVER_HOST_SERVICES
            )
        )
        yield agent, server


def _agent_tables(tpm: SWTPM, ca: TestCA) -> list[Table]:
    wall = Table(
        f"one full attestation through the real plugin processes (relay_attestation on swtpm; "
        f"wall ms, {AGENT_ROUNDS} per row after one warm-up)",
        ("EK", "AK", "n", "median", "p99", "max", "min", "objs left", "flush lag max"),
    )
    agent_id = f"spiffe://{TRUST_DOMAIN}/spire/agent/"
    attestations = 0
    with _plugins() as (agent, server):
        plugins = {"agent": agent, "server": server}
        server.configure(_hcl(ek_ca_path=str(ca.bundle_path)), TRUST_DOMAIN)
        agent.configure(_hcl(tcti=tpm.tcti), TRUST_DOMAIN)
        configured = {name: rss_bytes(p.process.pid) for name, p in plugins.items()}
        first: dict[str, int] = {}
        for ek in AGENT_EK_ALGORITHMS:
            for ak in AK_ALGORITHMS:
                progress(f"attesting swtpm: {ek} EK, {ak} AK")
                agent.configure(_hcl(tcti=tpm.tcti, ek_algorithm=ek, ak_algorithm=ak), TRUST_DOMAIN)
                relay_attestation(agent, server)  # warm-up
                _wait_until_flushed(tpm.tcti)
                first = first or {name: rss_bytes(p.process.pid) for name, p in plugins.items()}
                samples, lags = [], []
                for _ in range(AGENT_ROUNDS):
                    started = time.perf_counter()
                    result = relay_attestation(agent, server)
                    samples.append(time.perf_counter() - started)
                    if not result.spiffe_id.startswith(agent_id):
                        raise RuntimeError(f"unexpected agent ID {result.spiffe_id}")
                    lags.append(_wait_until_flushed(tpm.tcti))
                attestations += AGENT_ROUNDS + 1
                stats = Stats.of(samples)
                wall.record(
                    Figure.of_stats(
                        f"{ek} EK, {ak} AK: attestation through the plugins", stats, "ms", 1e3
                    )
                )
                wall.add(
                    ek,
                    ak,
                    stats.count,
                    ms(stats.median, 1),
                    ms(stats.p99, 1),
                    ms(stats.max, 1),
                    ms(stats.min, 1),
                    f"{sum(lag > 0 for lag in lags)}/{len(lags)}",
                    ms(max(lags), 1),
                )
        final = {name: rss_bytes(p.process.pid) for name, p in plugins.items()}
    wall.note(
        "agent TPM work (EK CreatePrimary, AK Create + Load, ActivateCredential) + gRPC relay "
        "+ server checks (policy cert, EC CA)"
    )
    wall.note(
        "objs left: attestations after which the agent's EK/AK were still loaded in the TPM "
        "when relay_attestation returned; flush lag: until they were gone (outside the wall "
        "time; each next attestation waits for it, else swtpm's 3 object slots run out)"
    )
    memory = Table(
        "plugin resident memory (VmRSS, MiB)",
        ("plugin", "after Configure", "after 1st attestation", f"after {attestations}", "growth"),
    )
    for name in plugins:
        memory.record(
            Figure(f"{name}: RSS after Configure", configured[name] / 2**20, "MiB"),
            Figure(f"{name}: RSS after {attestations} attestations", final[name] / 2**20, "MiB"),
        )
        memory.add(
            name,
            mib(configured[name]),
            mib(first[name]),
            mib(final[name]),
            f"{(final[name] - first[name]) / 2**20:+.1f}",
        )
    memory.note("growth: from the 1st attestation to the last")
    return [wall, memory]


def run() -> list[Table]:
    require_swtpm()

    with tempfile.TemporaryDirectory(prefix="bench-attestation-") as workdir, SWTPM() as tpm:
        work = Path(workdir)
        ec_ca = TestCA.create(work / "ec-ca", key_type="ec")
        rsa_ca = TestCA.create(work / "rsa-ca", name="Test RSA TPM", key_type="rsa")
        provision_ek_certificates(tpm.tcti, ec_ca, EK_ALGORITHMS)
        progress("capturing EK, EK certificate and AK from swtpm")
        captured = _capture(tpm, ec_ca)
        cases = _cases(work, captured, ec_ca, rsa_ca)
        results = []
        try:
            for case in cases:
                progress(f"server steps x {ATTESTATIONS}: {case.ek}, {case.trust}")
                results.append(_measure(case))
            tables = [_server_table(results)]
            # Profile the target case, and any case over the target.
            profiled = [r.case for r in results if (r.case.ek, r.case.trust) == TARGET_CASE]
            profiled += [
                r.case
                for r in results
                if median(r.total) >= TARGET_SECONDS and r.case not in profiled
            ]
            tables.extend(_profile(case) for case in profiled)
        finally:
            for config in {id(case.config): case.config for case in cases}.values():
                config.close()
        tables.extend(_agent_tables(tpm, ec_ca))
    return tables
