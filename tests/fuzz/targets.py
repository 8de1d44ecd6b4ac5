"""The fuzz targets: one per family of parsers that reads what an agent, a web server or
a file the operator did not write hands us.

Each target calls the code at the level where the plugin turns exceptions into gRPC
statuses (or, for configuration, into Validate's notes), and lets through only what that
level answers with a status other than INTERNAL: a `Rejected` or `PluginError` whose
code is not INTERNAL, an error of the core's tree (`AttestorError`), or the documented
error of a file format (ConfigProblems, DocumentError, the policy errors). Anything
else escaping, a crash, a hang or unbounded memory is a finding.

A target's input may start with one byte that picks which parser of the family reads
the rest (`Target.kinds`); its mutator keeps that byte and mutates the rest as the
format of the parser it picks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fuzz import mutators
from tests.fuzz.mutators import Mutation, Mutator

Run = Callable[[bytes], None]


class Finding(Exception):
    """What a target saw that must not happen (an INTERNAL status, say)."""


@dataclass(frozen=True)
class Kind:
    """One parser of a target's family: how it reads an input, how inputs mutate."""

    name: str
    run: Run
    mutate: Mutator


@dataclass(frozen=True)
class Target:
    name: str
    doc: str
    kinds: tuple[Kind, ...]
    setup: Callable[[], None] = lambda: None

    def run(self, data: bytes) -> None:
        if len(self.kinds) == 1:
            self.kinds[0].run(data)
        elif data:
            self.kinds[data[0] % len(self.kinds)].run(data[1:])

    def mutate(self, data: bytes, m: Mutation) -> bytes:
        if len(self.kinds) == 1:
            return self.kinds[0].mutate(data, m)[: m.max_size]
        if not data or m.chance(0.02):  # now and then another parser reads the same bytes
            return bytes([m.rng.randrange(len(self.kinds))]) + data[1:]
        kind = self.kinds[data[0] % len(self.kinds)]
        return (data[:1] + kind.mutate(data[1:], m))[: m.max_size]


def expect_status(action: Callable[[], object]) -> object:
    """Run a server step; a rejection must carry a status other than INTERNAL."""
    from server_plugin.checks import Rejected
    from spire_tpm_attestor.runtime.status import PluginError

    try:
        return action()
    except Rejected as rejected:
        error = rejected.error
    except PluginError as plugin_error:
        error = plugin_error
    if error.code == grpc.StatusCode.INTERNAL:
        raise Finding(f"INTERNAL: {error.message}")
    return None


def core_errors_only(*actions: Callable[[], object]) -> None:
    """Run each primitive; only the core's error tree may escape."""
    from spire_tpm_attestor.errors import AttestorError

    for action in actions:
        with contextlib.suppress(AttestorError):
            action()


# --- shared material ------------------------------------------------------------------------

VECTORS = Path(__file__).parent.parent / "unit" / "vectors"
NOW = datetime.datetime(2030, 6, 1, tzinfo=datetime.UTC)


def vector(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


@functools.cache
def devid_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A DevID CA whose key is fixed, so DevID certificates in the corpus stay valid."""
    from tests.unit.x509_builders import make_ca

    key = ec.derive_private_key(0xDE71D, ec.SECP256R1())
    issued = make_ca(
        "fuzz DevID CA",
        key=key,
        not_before=NOW - datetime.timedelta(days=3650),
        not_after=NOW + datetime.timedelta(days=3650),
    )
    return key, issued.cert


@functools.cache
def software_key(seed: int) -> ec.EllipticCurvePrivateKey:
    """An ECC key fixed by `seed`: the AK and DevID keys of the response target."""
    return ec.derive_private_key(seed, ec.SECP256R1())


AK_SEED, DEVID_SEED = 0xA4, 0xDE
NONCE = bytes(range(32))
SECRET = bytes(range(100, 132))


@functools.cache
def fuzz_config() -> Any:
    """The server configuration of the server targets: every check on (EK CA, allowlist,
    deny list, DevID CA, PCR policy, event log and its policy)."""
    from server_plugin.event_log_policy import parse_event_log_policy
    from server_plugin.evidence_config import EventLogOptions
    from server_plugin.pcr_policy import parse_pcr_policy
    from spire_tpm_attestor.ek_hash import ek_hash
    from spire_tpm_attestor.tpm.constants import TPM_ALG
    from spire_tpm_attestor.tpm.structures import parse_tpm2b_public
    from spire_tpm_attestor.x509 import load_ca_bundle, load_certificate
    from tests.unit.server_builders import fixed, listing, server_config
    from tests.unit.x509_builders import der

    listed = parse_tpm2b_public(bytes.fromhex(vector("swtpm_ek.json")["ecc256"]["ek_public"]))
    log_policy = parse_event_log_policy({"require_secure_boot": True})
    config = server_config(
        ek_policy="cert_or_allowlist",
        ek_ca=load_ca_bundle(VECTORS / "swtpm_localca_root.pem"),
        allowlist=[listing(ek_hash(listed.public_key()), name="listed")],
        denylist=[listing("ab" * 32)],
        devid_ca=[load_certificate(der(devid_ca()[1]))],
        pcr_selection=[(TPM_ALG.SHA256, 16)],
        pcr_policy=parse_pcr_policy({"sha256": {"16": "00" * 32}}),
        event_log=EventLogOptions(policy_file=fixed(log_policy)),
        agent_path_template="tpm/{{ .PubHash }}/{{ .DevIDSubjectCN }}",
    )
    return dataclasses.replace(config, enforce_ek_cert_expiry=False)


# --- the server's attestation payload ----------------------------------------------------------


def run_payload(data: bytes) -> None:
    from server_plugin import attestation

    config = fuzz_config()

    def attest() -> None:
        evidence = attestation.check_payload(config, attestation.decode_payload(data))
        attestation.issue_challenge(config, evidence)

    expect_status(attest)


@functools.cache
def tpm_public_mutator() -> Mutator:
    from spire_tpm_attestor.tpm.structures import parse_tpm2b_public

    return mutators.tpm_mutator(parse_tpm2b_public)


def payload_mutator(data: bytes, m: Mutation) -> bytes:
    from spire_tpm_attestor.wire import Payload

    public = tpm_public_mutator()
    certificate = mutate_certificate
    return mutators.message_mutator(
        Payload,
        {
            "ek_public": public,
            "ak_public": public,
            "devid_public": public,
            "ek_certificate": certificate,
            "ek_intermediates": certificate,
            "devid_certificates": certificate,
        },
        ints=("version",),
    )(data, m)


# --- the server's challenge response ---------------------------------------------------------


@functools.cache
def pending_challenge() -> Any:
    """What the server expects after challenging the response target's node: an AK and
    a DevID of fixed software keys, a PCR quote, the event log with its policy."""
    from server_plugin.allowlist import AllowlistEntry
    from server_plugin.attestation import Evidence, PendingChallenge
    from server_plugin.evidence_checks import VerifiedDevID
    from spire_tpm_attestor.tpm.constants import TPM_ALG
    from spire_tpm_attestor.tpm.structures import parse_tpm2b_public
    from spire_tpm_attestor.x509 import load_certificate
    from tests.unit.tpm_builders import DEVID_ATTRIBUTES, area, software_ak

    config = fuzz_config()
    ak = software_ak(software_key(AK_SEED))
    devid_public = area(software_key(DEVID_SEED).public_key(), attributes=DEVID_ATTRIBUTES)
    ek = parse_tpm2b_public(bytes.fromhex(vector("swtpm_ek.json")["ecc256"]["ek_public"]))
    certificate = load_certificate(devid_certificate(devid_public_key_der()))
    evidence = Evidence(
        pub_hash="cd" * 32,
        ek=ek,
        ak=ak,
        ek_certificate=None,
        allowlist_entry=AllowlistEntry("cd" * 32, name="node", labels={"rack": "r1"}),
        devid=VerifiedDevID(certificate, devid_public),
    )
    log_pcrs = config.event_log.selection
    requested = frozenset({(TPM_ALG.SHA256, 16)}) | log_pcrs
    return PendingChallenge(
        evidence,
        SECRET,
        NONCE,
        requested,
        config.pcr.policy(),
        log_pcrs,
        config.event_log.policy(),
    )


def devid_public_key_der() -> bytes:
    from cryptography.hazmat.primitives import serialization

    return (
        software_key(DEVID_SEED)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def devid_certificate(public_key_der: bytes, common_name: str = "node-1") -> bytes:
    """A DevID leaf for the key, issued by the fixed DevID CA (DER)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key, ca = devid_ca()
    public = serialization.load_der_public_key(public_key_der)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(7)
        .not_valid_before(NOW - datetime.timedelta(days=3650))
        .not_valid_after(NOW + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def run_response(data: bytes) -> None:
    from server_plugin import attestation
    from server_plugin.plugin import fit, joined_selectors

    config = fuzz_config()

    def verify() -> None:
        answer = attestation.decode_response(data)
        attested = attestation.verify_response(config, pending_challenge(), answer)
        attributes = attestation.agent_attributes(config, attested)
        joined_selectors(list(attributes.selector_values))  # as the audit line writes them
        fit(attributes.spiffe_id)

    expect_status(verify)


def response_mutator(data: bytes, m: Mutation) -> bytes:
    from spire_tpm_attestor.pb.attestation_pb2 import PCRValue
    from spire_tpm_attestor.tpm.structures import parse_attest, parse_signature
    from spire_tpm_attestor.wire import ChallengeResponse

    attest = mutators.tpm_mutator(parse_attest)
    signature = mutators.tpm_mutator(parse_signature)
    pcr_value = mutators.message_mutator(
        PCRValue,
        {"digest": mutators.either(lambda d, m: m.bytes(d, 64), 1.0)},
        ("hash_alg", "index"),
    )
    return mutators.message_mutator(
        ChallengeResponse,
        {
            "secret": lambda d, m: m.bytes(d, 64),
            "quote": attest,
            "quote_signature": signature,
            "devid_certify": attest,
            "devid_certify_signature": signature,
            "devid_signature": signature,
            "agent_nonce": lambda d, m: m.bytes(d, 33),
            "event_log": mutators.mutate_event_log,
            "event_log_absent": lambda d, m: m.bytes(d, 600),
            "pcr_values": pcr_value,
        },
        ints=("version",),
    )(data, m)


# --- TPM structures ---------------------------------------------------------------------------


@functools.cache
def ak_areas() -> list[Any]:
    from spire_tpm_attestor.tpm.structures import parse_tpm2b_public

    names = ("swtpm_ak_rsa.json", "swtpm_ak_ecc.json", "swtpm_ak_rsapss.json")
    return [parse_tpm2b_public(bytes.fromhex(vector(n)["ak_public"])) for n in names]


def run_tpm_public(data: bytes) -> None:
    from spire_tpm_attestor.tpm import keys
    from spire_tpm_attestor.tpm.credential import make_credential
    from spire_tpm_attestor.tpm.structures import parse_tpm2b_public

    def public() -> None:
        area = parse_tpm2b_public(data)
        core_errors_only(
            area.public_key,
            area.name,
            lambda: keys.check_ek_template(area),
            lambda: keys.check_ak_public(area),
            lambda: keys.scheme_name(area),
            # The TPM2B_ID_OBJECT and encrypted seed the server makes for this "EK".
            lambda: make_credential(area, ak_areas()[0].name(), SECRET),
            lambda: make_credential(ak_areas()[1], area.name(), SECRET),
        )

    core_errors_only(public)


def run_tpm_attest(data: bytes) -> None:
    from spire_tpm_attestor.tpm import verify
    from spire_tpm_attestor.tpm.constants import TPM_ALG
    from spire_tpm_attestor.tpm.structures import parse_attest

    def attest() -> None:
        parsed = parse_attest(data)
        quote = verify.check_quote_type(parsed) if parsed.quote else None
        core_errors_only(
            lambda: verify.check_tpm_generated(parsed),
            lambda: verify.check_nonce(parsed, NONCE),
            lambda: verify.check_certified_name(verify.check_certify_type(parsed), ak_areas()[1]),
        )
        if quote is not None:
            values = {(s.hash_alg, i): bytes(32) for s in quote.pcr_selection for i in s.indices}
            core_errors_only(
                lambda: verify.check_pcr_values_match_selection(quote.pcr_selection, values),
                lambda: verify.check_pcr_digest(quote, TPM_ALG.SHA256, values),
            )

    core_errors_only(attest)


def run_tpm_signature(data: bytes) -> None:
    from spire_tpm_attestor.tpm.structures import parse_signature
    from spire_tpm_attestor.tpm.verify import verify_signature

    def signature() -> None:
        parsed = parse_signature(data)
        for ak in ak_areas():
            core_errors_only(lambda ak=ak: verify_signature(ak, b"message", parsed))

    core_errors_only(signature)


# --- certificates ------------------------------------------------------------------------------


def _is_pem(data: bytes) -> bool:
    return b"-----BEGIN" in data


def _mutate_container(data: bytes, m: Mutation) -> bytes:
    """A certificate as it comes: PEM blocks (mutate one block's DER, or the blocks), a TCG
    NV header (its fields, or the DER behind it), or DER (one element of a sequence)."""
    import base64
    import re

    if _is_pem(data):
        pattern = re.compile(rb"(-----BEGIN ([A-Z0-9 ]+)-----)([^-]*)(-----END [A-Z0-9 ]+-----)")
        blocks = list(pattern.finditer(data))
        if not blocks:
            raise ValueError("no block")
        block = m.rng.choice(blocks)
        if m.chance(0.2):  # drop or repeat a block, or text around them
            choice = m.rng.randrange(3)
            span = data[block.start() : block.end()]
            if choice == 0:
                return data[: block.start()] + data[block.end() :]
            if choice == 1:
                return data[: block.end()] + b"\n" + span + data[block.end() :]
            return b"text before\n" + data + b"\ntext after"
        inner = base64.b64decode(b"".join(block.group(3).split()))
        text = base64.encodebytes(mutators.mutate_der(inner, m))
        return data[: block.start(3)] + b"\n" + text + data[block.end(3) :]
    if data[:2] == b"\x10\x01" and len(data) > 7:  # TCG stored certificate
        start = 7 if data[5:7] == b"\x10\x02" else 5
        inner = mutators.mutate_der(data[start:], m)
        head = bytearray(data[:start])
        if m.chance(0.3):
            head[m.rng.randrange(2, start)] = m.rng.choice(mutators.INTERESTING_BYTES)
        elif m.chance(0.8):
            head[3:5] = len(inner).to_bytes(2, "big")
        return bytes(head) + inner
    # DER, or several back to back (an NV chain index): one of them.
    elements, pos = [], 0
    while pos < len(data) and data[pos] == 0x30:
        _, end = mutators.read_tlv(data, pos)
        elements.append(data[pos:end])
        pos = end
    if not elements:
        raise ValueError("no DER")
    at = m.rng.randrange(len(elements))
    elements[at] = mutators.mutate_der(elements[at], m)
    if m.chance(0.1):
        elements.insert(at, elements[at])
    return b"".join(elements) + data[pos:]


mutate_certificate = mutators.either(_mutate_container, p_bytes=0.1)


@functools.cache
def chain_material() -> tuple[list[Any], list[Any]]:
    from spire_tpm_attestor.tpm.structures import parse_tpm2b_public
    from spire_tpm_attestor.x509 import load_ca_bundle

    ek = vector("swtpm_ek.json")
    areas = [parse_tpm2b_public(bytes.fromhex(ek[k]["ek_public"])) for k in ("rsa2048", "ecc256")]
    bundle = load_ca_bundle(VECTORS / "swtpm_localca_root.pem")
    bundle += load_ca_bundle(VECTORS / "swtpm_localca_intermediate.pem")
    return areas, bundle


def _use_certificate(certificate: Any) -> None:
    """Everything the server reads from a certificate it parsed."""
    from spire_tpm_attestor import x509 as core_x509
    from spire_tpm_attestor.identity import selector_safe
    from spire_tpm_attestor.x509.issuers import ca_issuers_urls

    areas, bundle = chain_material()
    for text in (
        certificate.tcg_manufacturer,
        certificate.tcg_model,
        certificate.tcg_version,
        certificate.issuer_common_name,
        certificate.subject_common_name,
    ):
        if text:
            selector_safe(text)
    certificate.key_usage  # noqa: B018
    certificate.is_ca  # noqa: B018
    certificate.unknown_critical_extensions  # noqa: B018
    certificate.describe()
    certificate.sha256_fingerprint  # noqa: B018
    core_errors_only(
        certificate.public_key,
        lambda: core_x509.anchor_problem(certificate),
        lambda: ca_issuers_urls(certificate),
        lambda: core_x509.check_validity(certificate, NOW),
        *(lambda a=a: core_x509.certificate_matches_public_area(certificate, a) for a in areas),
        lambda: core_x509.verify_chain(certificate, [], bundle, NOW, enforce_expiry=False),
    )


def run_certificate(data: bytes) -> None:
    from spire_tpm_attestor.x509 import load_certificate

    core_errors_only(lambda: _use_certificate(load_certificate(data)))


def run_ca_bundle(data: bytes) -> None:
    from spire_tpm_attestor.x509 import ca_certificates_in, certificates_in

    def strict() -> None:
        for certificate in certificates_in(data):
            _use_certificate(certificate)

    core_errors_only(lambda: ca_certificates_in(data), strict)


def run_aia_answer(data: bytes) -> None:
    from spire_tpm_attestor.x509.issuers import issuer_certificates

    def answer() -> None:
        for certificate in issuer_certificates(data):
            _use_certificate(certificate)

    core_errors_only(answer)


def run_nv_chain(data: bytes) -> None:
    from spire_tpm_attestor.x509.certificate import from_der
    from spire_tpm_attestor.x509.issuers import nv_chain_certificates

    def chain() -> None:
        for der in nv_chain_certificates(data):
            core_errors_only(lambda der=der: _use_certificate(from_der(der)))

    core_errors_only(chain)


# --- allowlists ----------------------------------------------------------------------------------

ALLOWLIST_WORDS = ("version", "entries", "pub_hash", "name", "labels", "rack", "a" * 64)


def run_allowlist_document(data: bytes) -> None:
    from server_plugin.allowlist.document import DocumentError, DocumentParser, parse_document

    try:
        index = parse_document(data, "fuzz")
    except DocumentError:
        return
    index.lookup("a" * 64, "fuzz")
    index.lookup("0" * 64, "fuzz")
    # Fed in pieces, as the HTTP source reads a body: the same verdict.
    parser = DocumentParser("fuzz")
    step = 1 + zlib.crc32(data) % 97
    for at in range(0, len(data), step):
        parser.feed(data[at : at + step])
    if len(parser.finish()) != len(index):
        raise Finding("a document fed in pieces reads differently")


def run_allowlist_entry(data: bytes) -> None:
    from server_plugin.allowlist.base import AllowlistError, parse_entry_body

    with contextlib.suppress(AllowlistError):
        parse_entry_body("a" * 64, data, "fuzz")


# --- configuration and policy files --------------------------------------------------------------

SANDBOX_FILES = {
    "ca.pem": (VECTORS / "swtpm_localca_root.pem").read_bytes(),
    "allowlist.json": b'{"version": 1, "entries": [{"pub_hash": "' + b"a" * 64 + b'"}]}',
    "pcr_policy.hcl": b'sha256 { "7" = "' + b"00" * 32 + b'" }',
    "event_log_policy.hcl": b"require_secure_boot = true",
    "entries/" + "a" * 64: b'{"name": "n"}',
}


@functools.cache
def sandbox() -> str:
    """A directory of the files the configuration seeds name (by relative path): the
    configuration target runs in it, so what the mutated paths reach stays small."""
    root = Path(tempfile.mkdtemp(prefix="fuzz-config-")) / "a" / "b" / "sandbox"
    for name, content in SANDBOX_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return str(root)


def enter_sandbox() -> None:
    os.chdir(sandbox())


def _validate(build: Callable[[str, Any], Any], data: bytes) -> None:
    """What Validate does with SPIRE's `hcl_configuration`: build, note, close."""
    from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig

    try:
        text = data.decode()
    except UnicodeDecodeError:
        return  # protobuf strings are UTF-8: SPIRE cannot send this
    try:
        config = build(text, CoreConfig(trust_domain="example.org"))
    except ConfigProblems:
        return
    getattr(config, "notes", ())
    config.close()


def run_server_config(data: bytes) -> None:
    from server_plugin.config import build_server_config

    _validate(build_server_config, data)


def run_agent_config(data: bytes) -> None:
    from agent_plugin.config import build_agent_config

    _validate(build_agent_config, data)


def _policy(parse: Callable[[Any, str], object], errors: tuple[type[Exception], ...]) -> Run:
    def run(data: bytes) -> None:
        from spire_tpm_attestor.runtime.config import ConfigProblems, parse_hcl

        try:
            parse(parse_hcl(data.decode("utf-8", "replace")), "policy")
        except (ConfigProblems, *errors):
            pass

    return run


@functools.cache
def config_vocabulary() -> tuple[str, ...]:
    from agent_plugin.config import AGENT_OPTIONS
    from server_plugin.allowlist.config import HTTP_OPTIONS, PATH_OPTIONS, SOURCE_OPTIONS
    from server_plugin.config import SERVER_OPTIONS
    from server_plugin.event_log_policy import POLICY_RULES
    from spire_tpm_attestor.runtime.observability import OBSERVABILITY_OPTIONS
    from spire_tpm_attestor.tpm.constants import BANKS_BY_NAME

    words: set[str] = set(SANDBOX_FILES) | {"sha256", "sha1", "7", "0", "23", "24", "1h", "-1s"}
    for table in (
        AGENT_OPTIONS,
        SERVER_OPTIONS,
        SOURCE_OPTIONS,
        PATH_OPTIONS,
        HTTP_OPTIONS,
        OBSERVABILITY_OPTIONS,
        POLICY_RULES,
    ):
        words |= set(table)
    words |= set(BANKS_BY_NAME)
    return tuple(sorted(words))


def _hcl_mutator(data: bytes, m: Mutation) -> bytes:
    from spire_tpm_attestor.runtime.config import parse_hcl

    return mutators.hcl_mutator(parse_hcl, config_vocabulary())(data, m)


def run_event_log(data: bytes) -> None:
    from spire_tpm_attestor import eventlog
    from spire_tpm_attestor.tpm.constants import TPM_ALG
    from spire_tpm_attestor.wire import EVENT_LOG_LIMITS

    def replayed() -> None:
        from server_plugin.event_log_policy import ProvenBoot

        log = eventlog.parse(data, EVENT_LOG_LIMITS)
        replay = eventlog.replay(log)
        # Quoted values that match the log, so that the facts are derived from it.
        quoted = {}
        for bank in (TPM_ALG.SHA1, TPM_ALG.SHA256):
            for pcr in range(8):
                value = replay.value(bank, pcr)
                if value is not None:
                    quoted[bank, pcr] = value
        verified = eventlog.verify(log, quoted)
        facts = eventlog.derive_facts(verified.events)
        eventlog.selectors(facts)
        policy = fuzz_config().event_log.policy()
        policy.refusal(ProvenBoot(facts, verified.pcrs), "")

    core_errors_only(replayed)


def run_agent_challenge(data: bytes) -> None:
    from agent_plugin.plugin import decode_challenge
    from agent_plugin.tpm import TPMAccessError
    from agent_plugin.tpm.quote import _normalize_selection, _tpml_pcr_selection
    from spire_tpm_attestor.pb import spire_agent_nodeattestor_pb2 as agent_pb2

    def decode() -> None:
        challenge = decode_challenge(agent_pb2.Challenge(challenge=data))
        selection = [(bank.hash_alg, list(bank.indices)) for bank in challenge.pcr_selection]
        with contextlib.suppress(TPMAccessError):
            _tpml_pcr_selection(_normalize_selection(selection))

    expect_status(decode)


def challenge_mutator(data: bytes, m: Mutation) -> bytes:
    from spire_tpm_attestor.pb.attestation_pb2 import PCRBankSelection
    from spire_tpm_attestor.wire import Challenge

    bank = mutators.message_mutator(PCRBankSelection, {}, ("hash_alg",))
    return mutators.message_mutator(
        Challenge,
        {
            "credential_blob": lambda d, m: m.bytes(d, 1100),
            "encrypted_secret": lambda d, m: m.bytes(d, 1100),
            "nonce": lambda d, m: m.bytes(d, 40),
            "pcr_selection": bank,
        },
        ("version", "want_event_log"),
    )(data, m)


def _tpm_kind(name: str, run: Run, parse: str) -> Kind:
    from spire_tpm_attestor.tpm import structures

    return Kind(name, run, mutators.tpm_mutator(getattr(structures, parse)))


@functools.cache
def targets() -> dict[str, Target]:
    json_words = mutators.json_mutator(ALLOWLIST_WORDS)
    all_targets = (
        Target(
            "server_payload",
            "the attestation payload through decode, EK/AK/certificate/DevID checks and "
            "the challenge (MakeCredential)",
            (Kind("payload", run_payload, payload_mutator),),
        ),
        Target(
            "server_response",
            "the challenge response through decode, secret, quote, PCR policy, event log "
            "replay and policy, DevID residency and signature, selectors",
            (Kind("response", run_response, response_mutator),),
        ),
        Target(
            "agent_challenge",
            "the challenge the agent receives: decode and the PCR selection for TPM2_Quote",
            (Kind("challenge", run_agent_challenge, challenge_mutator),),
        ),
        Target(
            "tpm_structures",
            "TPM2B_PUBLIC (key, Name, EK/AK templates, MakeCredential's ID object), "
            "TPMS_ATTEST, TPMT_SIGNATURE (verified against real AKs)",
            (
                _tpm_kind("tpm2b_public", run_tpm_public, "parse_tpm2b_public"),
                _tpm_kind("tpms_attest", run_tpm_attest, "parse_attest"),
                _tpm_kind("tpmt_signature", run_tpm_signature, "parse_signature"),
            ),
        ),
        Target(
            "x509",
            "certificates as DER, PEM or NV reads (the tolerant re-encoding), CA bundles, "
            "AIA answers (DER, PEM, PKCS#7), EK chain NV indices; every field read after",
            (
                Kind("certificate", run_certificate, mutate_certificate),
                Kind("ca_bundle", run_ca_bundle, mutate_certificate),
                Kind("aia_answer", run_aia_answer, mutate_certificate),
                Kind("nv_chain", run_nv_chain, mutate_certificate),
            ),
        ),
        Target(
            "allowlist",
            "allowlist JSON documents (whole and fed in pieces) and directory entry files",
            (
                Kind("document", run_allowlist_document, json_words),
                Kind("entry", run_allowlist_entry, json_words),
            ),
        ),
        Target(
            "config",
            "HCL configuration of both plugins (the Validate path) and PCR and event log "
            "policy files",
            (
                Kind("server", run_server_config, _hcl_mutator),
                Kind("agent", run_agent_config, _hcl_mutator),
                Kind("pcr_policy", _policy(*_pcr_policy_parts()), _hcl_mutator),
                Kind("event_log_policy", _policy(*_event_log_policy_parts()), _hcl_mutator),
            ),
            setup=enter_sandbox,
        ),
        Target(
            "event_log",
            "the firmware event log: parse, replay, verify, boot facts, selectors, policy",
            (Kind("event_log", run_event_log, mutators.mutate_event_log),),
        ),
    )
    return {target.name: target for target in all_targets}


def _pcr_policy_parts() -> tuple[Callable[[Any, str], object], tuple[type[Exception], ...]]:
    from server_plugin.pcr_policy import PCRPolicyError, parse_pcr_policy

    return parse_pcr_policy, (PCRPolicyError,)


def _event_log_policy_parts() -> tuple[Callable[[Any, str], object], tuple[type[Exception], ...]]:
    from server_plugin.event_log_policy import EventLogPolicyError, parse_event_log_policy

    return parse_event_log_policy, (EventLogPolicyError,)


def names() -> Sequence[str]:
    return tuple(targets())


def corpus_files(directory: Path) -> Iterator[Path]:
    return iter(sorted(p for p in directory.iterdir() if p.is_file()))


def preload() -> None:
    """Import everything the targets run and build their material (under atheris, inside
    its instrumentation, so that all of it is measured for coverage)."""
    import spire_tpm_attestor.eventlog
    import spire_tpm_attestor.x509.issuers  # noqa: F401

    fuzz_config()
    pending_challenge()
    ak_areas()
    chain_material()
    config_vocabulary()
