"""Setting up platform state and DevIDs in a simulator, the way an operator would."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spire_tpm_attestor import wire
from spire_tpm_attestor.cli.main import main as cli_main
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.pb.spire_server_nodeattestor_pb2 import AgentAttributes
from spire_tpm_attestor.runtime.host import AttestationResult, PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.eventlog_builder import EV_NO_ACTION, SHA1, SHA256, SHA384, SHA512, BuiltLog
from tests.integration.plugins import (
    AgentConversation,
    ServerConversation,
    expect_rejection,
    hcl,
)

tss = pytest.importorskip("tpm2_pytss")
tss_utils = pytest.importorskip("tpm2_pytss.utils")

BANK_FIELDS = {SHA1: "sha1", SHA256: "sha256", SHA384: "sha384", SHA512: "sha512"}


def extend_pcr(tcti: str, index: int, measurement: bytes) -> None:
    """What a boot component does: measure something into a PCR (all banks)."""
    esapi = tss.ESAPI(tcti)
    try:
        esapi.pcr_event(getattr(tss.ESYS_TR, f"PCR{index}"), measurement)
    finally:
        esapi.close()


def measure_boot(tcti: str, log: BuiltLog) -> None:
    """What firmware does while writing `log`: extend each event's digests, in order.

    PCR 0 cannot start at locality 3 or 4 on swtpm (TPM2_Startup runs at locality 0 there),
    so the logs given here have no StartupLocality or H-CRTM event."""
    assert not log.startup_locality, "swtpm's PCR 0 starts at 0"
    esapi = tss.ESAPI(tcti)
    try:
        for event in log.events:
            if not event.extended or event.type == EV_NO_ACTION:
                continue
            digests = [
                tss.TPMT_HA(hashAlg=bank, digest=tss.TPMU_HA(**{BANK_FIELDS[bank]: digest}))
                for bank, digest in event.digests.items()
            ]
            esapi.pcr_extend(
                getattr(tss.ESYS_TR, f"PCR{event.pcr}"), tss.TPML_DIGEST_VALUES(digests)
            )
    finally:
        esapi.close()


def read_pcrs(tcti: str, indices: list[int]) -> dict[int, bytes]:
    """The SHA-256 bank's values, one PCR_Read per PCR (independent of the agent's code)."""
    esapi = tss.ESAPI(tcti)
    try:
        values = {}
        for index in indices:
            _, _, digests = esapi.pcr_read(tss.TPML_PCR_SELECTION.parse(f"sha256:{index}"))
            values[index] = bytes(digests[0])
        return values
    finally:
        esapi.close()


@dataclass(frozen=True)
class DevIDFiles:
    """What `spire-tpm-attestor devid create` wrote, plus the certificate chain."""

    directory: Path
    certificate: x509.Certificate
    chain_path: Path

    @property
    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        key = self.certificate.public_key()
        assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
        return key

    def agent_options(self, key_form: str = "pem") -> dict[str, str]:
        options = {"devid_cert_path": str(self.chain_path)}
        if key_form == "pem":
            options["devid_key_path"] = str(self.directory / "devid.tss.pem")
        else:
            options["devid_public_path"] = str(self.directory / "devid.pub")
            options["devid_private_path"] = str(self.directory / "devid.priv")
        return options


def issue_chain(
    ca: TestCA, key: object, directory: Path, subject: str
) -> tuple[x509.Certificate, Path]:
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    certificate = ca.issue_devid_certificate(key, subject)
    path = directory / "devid-chain.pem"
    path.write_bytes(ca.chain_pem(certificate))
    return certificate, path


def provision_devid(
    tcti: str, ca: TestCA, directory: Path, algorithm: str = "ecc", subject: str = "node-7"
) -> DevIDFiles:
    """Create the DevID key with the operator CLI, then have `ca` certify its public key."""
    directory.mkdir(parents=True, exist_ok=True)
    agent_config = directory / "agent-plugin-data.hcl"
    agent_config.write_text(hcl(tcti=tcti))
    command = ["devid", "create", "--agent-config", str(agent_config)]
    assert cli_main([*command, "--out-dir", str(directory), "--algorithm", algorithm]) == 0
    key = serialization.load_pem_public_key((directory / "devid.pub.pem").read_bytes())
    certificate, chain_path = issue_chain(ca, key, directory, subject)
    return DevIDFiles(directory, certificate, chain_path)


def import_software_devid(tcti: str, ca: TestCA, directory: Path) -> DevIDFiles:
    """A DevID key made in software (so known outside the TPM), with a genuine certificate,
    imported under the agent's SRK: the TPM loads and uses it, but not as fixedTPM."""
    from agent_plugin.tpm.session import srk_template

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    attributes = tss.TPMA_OBJECT.USERWITHAUTH | tss.TPMA_OBJECT.SIGN_ENCRYPT
    public = tss.TPM2B_PUBLIC.from_pem(pem, objectAttributes=attributes)
    sensitive = tss.TPM2B_SENSITIVE.from_pem(pem)
    esapi = tss.ESAPI(tcti)
    try:
        srk, srk_public, *_ = esapi.create_primary(
            tss.TPM2B_SENSITIVE_CREATE(), srk_template(), tss.ESYS_TR.OWNER
        )
        try:
            seed_key, duplicate, seed = tss_utils.wrap(srk_public.publicArea, public, sensitive)
            private = esapi.import_(
                srk,
                seed_key,
                public,
                duplicate,
                seed,
                tss.TPMT_SYM_DEF_OBJECT(algorithm=tss.TPM2_ALG.NULL),
            )
        finally:
            esapi.flush_context(srk)
    finally:
        esapi.close()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "devid.pub").write_bytes(bytes(public.marshal()))
    (directory / "devid.priv").write_bytes(bytes(private.marshal()))
    certificate, chain_path = issue_chain(ca, key.public_key(), directory, "software-key")
    return DevIDFiles(directory, certificate, chain_path)


@dataclass
class Exchange:
    """One attestation as the man in the middle saw it (after any rewriting)."""

    payload: attestation_pb2.Payload
    challenge: attestation_pb2.Challenge | None = None
    response: attestation_pb2.ChallengeResponse | None = None
    attributes: AgentAttributes | None = None
    error: grpc.RpcError | None = None


Rewrite = Callable[[Any], None]


def _no_change(message: Any) -> None:
    del message


def intercept(
    agent: PluginProcess,
    server: PluginProcess,
    *,
    payload: Rewrite = _no_change,
    challenge: Rewrite = _no_change,
    response: Rewrite = _no_change,
) -> Exchange:
    """Relay one attestation by hand, letting each rewrite change its message in transit."""
    node, spire = AgentConversation(agent), ServerConversation(server)
    try:
        exchange = Exchange(wire.decode_payload(node.payload()))
        payload(exchange.payload)
        try:
            sent = spire.send_payload(wire.encode(exchange.payload)).challenge
            exchange.challenge = wire.decode_challenge(sent)
            challenge(exchange.challenge)
            answer = node.answer(wire.encode(exchange.challenge))
            exchange.response = wire.decode_challenge_response(answer)
            response(exchange.response)
            result = spire.send_answer(wire.encode(exchange.response))
            exchange.attributes = result.agent_attributes
        except grpc.RpcError as error:
            exchange.error = error
        return exchange
    finally:
        node.close()
        spire.close()


@dataclass(frozen=True)
class DevIDNode:
    """What every DevID end-to-end test starts from: the agent on a fresh swtpm (with EK
    certificates from `ek_ca`), the server, the DevID CA, and the test's directory."""

    agent: PluginProcess
    server: PluginProcess
    swtpm: SWTPM
    ek_ca: TestCA
    devid_ca: TestCA
    directory: Path

    def configure(self, devid: DevIDFiles | None, **server_options: object) -> None:
        """The agent with `devid` (or none); the server trusting both CAs unless told."""
        self.agent.configure(hcl(tcti=self.swtpm.tcti, **(devid.agent_options() if devid else {})))
        server_options.setdefault("ek_ca_path", str(self.ek_ca.bundle_path))
        server_options.setdefault("devid_ca_path", str(self.devid_ca.root_path))
        self.server.configure(hcl(**server_options))

    def attest(self) -> AttestationResult:
        return relay_attestation(self.agent, self.server)

    def expect_rejection(self, code: grpc.StatusCode, words: str) -> dict[str, str]:
        return expect_rejection(self.agent, self.server, code, words)

    def intercept(self, **rewrites: Rewrite) -> Exchange:
        return intercept(self.agent, self.server, **rewrites)
