"""DevID end to end: provisioned with the CLI, proven by the real agent, checked by the server."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from spire_tpm_attestor import wire
from spire_tpm_attestor.harness import AttestationFailed, PluginProcess, relay_attestation
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.swtpm import SWTPM, TestCA
from spire_tpm_attestor.tpm.errors import VerificationError
from spire_tpm_attestor.tpm.structures import parse_signature, parse_tpm2b_public
from spire_tpm_attestor.tpm.verify import verify_signature
from tests.integration.platform_setup import (
    DevIDFiles,
    Exchange,
    import_software_devid,
    intercept,
    provision_devid,
)
from tests.integration.plugins import expect_rejection, hcl, provisioned_hash
from tests.integration.tpm_state import leftover_handles
from tests.unit.tpm_builders import marshal_public, tpm_sign

pytestmark = pytest.mark.swtpm

DEVID_ATTRIBUTES = 0x00040072  # fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, sign
ECDSA = 0x0018
CLI = "spire-tpm-attestor"


@pytest.fixture(scope="module")
def devid_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("devid-ca"), name="Test DevID")


@pytest.fixture
def devid(swtpm: SWTPM, devid_ca: TestCA, tmp_path: Path) -> DevIDFiles:
    return provision_devid(swtpm.tcti, devid_ca, tmp_path / "devid")


def configure(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    devid: DevIDFiles | None,
    **server_options: object,
) -> None:
    agent.configure(hcl(tcti=swtpm.tcti, **(devid.agent_options() if devid else {})))
    server_options.setdefault("ek_ca_path", str(ek_ca.bundle_path))
    server_options.setdefault("devid_ca_path", str(devid_ca.root_path))
    server.configure(hcl(**server_options))


@pytest.mark.parametrize(("algorithm", "key_form"), [("ecc", "pem"), ("rsa", "blobs")])
def test_devid_is_proven_and_becomes_selectors(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    tmp_path: Path,
    algorithm: str,
    key_form: str,
) -> None:
    devid = provision_devid(swtpm.tcti, devid_ca, tmp_path, algorithm, subject="rack1-node7")
    agent.configure(hcl(tcti=swtpm.tcti, **devid.agent_options(key_form)))
    server.configure(
        hcl(
            ek_ca_path=str(ek_ca.bundle_path),
            devid_ca_path=str(devid_ca.root_path),
            require_devid=True,
            agent_path_template="{{ .PluginName }}/{{ .DevIDSubjectCN }}",
        )
    )
    result = relay_attestation(agent, server)
    assert result.spiffe_id == "spiffe://example.org/spire/agent/tpm/rack1-node7"
    der = devid.certificate.public_bytes(serialization.Encoding.DER)
    assert {
        "devid:subject:cn:rack1-node7",
        "devid:issuer:cn:Test DevID EK Intermediate CA",
        f"devid:serialnumber:{devid.certificate.serial_number:x}",
        f"devid:fingerprint:{hashlib.sha256(der).hexdigest()}",
    } <= set(result.selectors), result.selectors
    assert result.challenge_rounds == 1
    assert leftover_handles(swtpm.tcti) == []


def test_devid_of_another_tpm_fails_the_agent_cleanly(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    tmp_path: Path,
) -> None:
    with SWTPM() as other:
        devid = provision_devid(other.tcti, devid_ca, tmp_path)
    configure(agent, server, swtpm, ek_ca, devid_ca, devid)
    with pytest.raises(AttestationFailed) as failure:
        relay_attestation(agent, server)
    assert failure.value.side == "agent" and "loading the DevID key" in failure.value.details
    assert leftover_handles(swtpm.tcti) == []


def test_devid_with_pcrs_and_template_fields(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    devid: DevIDFiles,
) -> None:
    template = "{{ .DevIDSerialNumber }}/{{ .DevIDFingerprint }}"
    configure(
        agent,
        server,
        swtpm,
        ek_ca,
        devid_ca,
        devid,
        require_devid=True,
        agent_path_template=template,
        pcr_selection={"sha256": [0, 7]},
    )
    result = relay_attestation(agent, server)
    der = devid.certificate.public_bytes(serialization.Encoding.DER)
    serial = f"{devid.certificate.serial_number:x}"
    assert result.spiffe_id.endswith(f"/{serial}/{hashlib.sha256(der).hexdigest()}")
    assert sum(s.startswith("pcr:sha256:") for s in result.selectors) == 2


def test_devid_is_ignored_by_a_server_without_devid_ca(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA, devid: DevIDFiles
) -> None:
    agent.configure(hcl(tcti=swtpm.tcti, **devid.agent_options()))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))
    result = relay_attestation(agent, server)
    assert not any(s.startswith("devid:") for s in result.selectors)


def test_devid_from_another_ca_is_denied(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    tmp_path: Path,
) -> None:
    rogue = TestCA.create(tmp_path / "rogue", name="Rogue DevID")
    devid = provision_devid(swtpm.tcti, rogue, tmp_path / "devid")
    configure(agent, server, swtpm, ek_ca, devid_ca, devid)
    audit = expect_rejection(
        agent, server, grpc.StatusCode.PERMISSION_DENIED, "does not chain to devid_ca_path"
    )
    assert audit["check"] == "devid_cert_chain"


def test_devid_ca_directory_is_reloaded_when_it_changes(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    tmp_path: Path,
) -> None:
    new_ca = TestCA.create(tmp_path / "new-ca", name="New DevID")
    devid = provision_devid(swtpm.tcti, new_ca, tmp_path / "devid")
    trusted = tmp_path / "devid-ca.d"
    trusted.mkdir()
    shutil.copy(devid_ca.root_path, trusted / "old-root.pem")
    configure(agent, server, swtpm, ek_ca, devid_ca, devid, devid_ca_path=str(trusted))
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "devid_ca_path")
    # The operator adds the new CA: no restart, no reconfiguration.
    shutil.copy(new_ca.root_path, trusted / "new-root.pem")
    deadline = time.monotonic() + 10
    while True:
        try:
            result = relay_attestation(agent, server)
            break
        except AttestationFailed:
            assert time.monotonic() < deadline, "the new DevID CA was not picked up"
            time.sleep(0.1)
    assert "devid:issuer:cn:New DevID EK Intermediate CA" in result.selectors


def test_required_devid_missing_is_denied(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA, devid_ca: TestCA
) -> None:
    configure(agent, server, swtpm, ek_ca, devid_ca, None, require_devid=True)
    audit = expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "no DevID")
    assert audit["check"] == "devid_required"


def test_known_ek_and_valid_devid_are_both_required(
    agent: PluginProcess,
    server: PluginProcess,
    bare_swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    tmp_path: Path,
) -> None:
    pub_hash = provisioned_hash(bare_swtpm, ek_ca, "rsa2048")
    hashes = tmp_path / "hashes"
    hashes.mkdir()
    devid = provision_devid(bare_swtpm.tcti, devid_ca, tmp_path / "devid")
    both = {"ek_policy": "allowlist", "hash_path": str(hashes), "require_devid": True}

    # A valid DevID does not make up for an unknown EK...
    configure(agent, server, bare_swtpm, ek_ca, devid_ca, devid, **both)
    audit = expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "not in the allow")
    assert audit["check"] == "allowlist"
    # ...nor a known EK for a missing DevID.
    (hashes / pub_hash).write_text("")
    configure(agent, server, bare_swtpm, ek_ca, devid_ca, None, **both)
    expect_rejection(agent, server, grpc.StatusCode.PERMISSION_DENIED, "sent no DevID")
    # Both: admitted.
    configure(agent, server, bare_swtpm, ek_ca, devid_ca, devid, **both)
    assert f"pub_hash:{pub_hash}" in relay_attestation(agent, server).selectors


def test_key_imported_from_software_is_not_a_devid(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    tmp_path: Path,
) -> None:
    # A key that existed outside the TPM, with a genuine certificate: the TPM loads it,
    # certifies it and signs with it, but its public area cannot claim fixedTPM.
    devid = import_software_devid(swtpm.tcti, devid_ca, tmp_path)
    agent.configure(hcl(tcti=swtpm.tcti, **devid.agent_options("blobs")))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path), devid_ca_path=str(devid_ca.root_path)))
    audit = expect_rejection(
        agent, server, grpc.StatusCode.PERMISSION_DENIED, "FIXED_TPM is not set"
    )
    assert audit["check"] == "devid_key_attributes"


# -- a man in the middle rewrites the DevID evidence -------------------------------------


def _denied(exchange: Exchange, words: str) -> None:
    assert exchange.error is not None, "the server admitted a tampered attestation"
    assert exchange.error.code() == grpc.StatusCode.PERMISSION_DENIED, exchange.error.details()
    assert words in (exchange.error.details() or ""), exchange.error.details()


def test_certificate_for_another_key_is_denied(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    devid: DevIDFiles,
) -> None:
    configure(agent, server, swtpm, ek_ca, devid_ca, devid)
    # A genuine certificate from the trusted CA, for a key that is not the DevID public area.
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    certificate = devid_ca.issue_devid_certificate(other, "node-7")

    def swap_certificate(payload: attestation_pb2.Payload) -> None:
        payload.devid_certificates[0] = certificate.public_bytes(serialization.Encoding.DER)

    exchange = intercept(agent, server, payload=swap_certificate)
    _denied(exchange, "DevID certificate key differs from the DevID public area")


def test_devid_swapped_for_a_software_key_fails_residency(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    devid: DevIDFiles,
) -> None:
    # The attacker holds a software key with a valid certificate and claims it is in the
    # TPM; everything verifies except the AK's certification of what is really loaded.
    configure(agent, server, swtpm, ek_ca, devid_ca, devid)
    software = ec.generate_private_key(ec.SECP256R1())
    certificate = devid_ca.issue_devid_certificate(software.public_key(), "node-7")

    def claim_software_key(payload: attestation_pb2.Payload) -> None:
        payload.devid_public = marshal_public(software.public_key(), attributes=DEVID_ATTRIBUTES)
        payload.devid_certificates[0] = certificate.public_bytes(serialization.Encoding.DER)

    def sign_in_software(response: attestation_pb2.ChallengeResponse) -> None:
        signed = wire.devid_signed_data(challenges[-1].nonce, response.agent_nonce)
        response.devid_signature = tpm_sign(software, signed, ECDSA)

    challenges: list[attestation_pb2.Challenge] = []
    exchange = intercept(
        agent,
        server,
        payload=claim_software_key,
        challenge=challenges.append,
        response=sign_in_software,
    )
    _denied(exchange, "certified Name does not match the certified public area")


def _drop_certify(response: attestation_pb2.ChallengeResponse) -> None:
    response.ClearField("devid_certify")


def _change_agent_nonce(response: attestation_pb2.ChallengeResponse) -> None:
    response.agent_nonce = bytes(32)


def _drop_signature(response: attestation_pb2.ChallengeResponse) -> None:
    response.ClearField("devid_signature")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (_drop_certify, "no TPM2_Certify"),
        (_change_agent_nonce, "DevID signature does not verify"),
        (_drop_signature, "no DevID signature"),
    ],
)
def test_tampered_devid_proof_is_denied(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    devid: DevIDFiles,
    change: object,
    words: str,
) -> None:
    configure(agent, server, swtpm, ek_ca, devid_ca, devid)
    _denied(intercept(agent, server, response=change), words)  # type: ignore[arg-type]


def test_certification_over_an_old_nonce_is_denied(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    devid: DevIDFiles,
) -> None:
    configure(agent, server, swtpm, ek_ca, devid_ca, devid)
    earlier = intercept(agent, server)
    assert earlier.challenge is not None and earlier.attributes is not None

    def replay_nonce(challenge: attestation_pb2.Challenge) -> None:
        challenge.nonce = earlier.challenge.nonce  # type: ignore[union-attr]

    exchange = intercept(agent, server, challenge=replay_nonce)
    _denied(exchange, "DevID certification does not verify: attestation extraData")


def test_agent_never_signs_the_server_nonce_alone(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    devid: DevIDFiles,
) -> None:
    configure(agent, server, swtpm, ek_ca, devid_ca, devid)
    exchanges = [intercept(agent, server) for _ in range(3)]
    agent_nonces = set()
    for exchange in exchanges:
        assert exchange.challenge and exchange.response and exchange.attributes
        server_nonce, response = exchange.challenge.nonce, exchange.response
        assert len(response.agent_nonce) == 32 and response.agent_nonce != server_nonce
        agent_nonces.add(response.agent_nonce)
        area = parse_tpm2b_public(exchange.payload.devid_public)
        signature = parse_signature(response.devid_signature)
        verify_signature(area, server_nonce + response.agent_nonce, signature)
        # What a server could try to get signed: its own nonce, or a digest of it.
        for chosen_by_server in (server_nonce, hashlib.sha256(server_nonce).digest()):
            with pytest.raises(VerificationError):
                verify_signature(area, chosen_by_server, signature)
    assert len(agent_nonces) == len(exchanges)  # fresh every time


def test_example_provisioning_script_with_an_openssl_ca(
    agent: PluginProcess,
    server: PluginProcess,
    swtpm: SWTPM,
    ek_ca: TestCA,
    devid_ca: TestCA,
    tmp_path: Path,
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca_key = tmp_path / "ca-key.pem"
    ca_key.write_bytes(
        devid_ca.intermediate_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    agent_config = tmp_path / "agent.hcl"
    agent_config.write_text(hcl(tcti=swtpm.tcti))
    out = tmp_path / "devid"
    script = Path(__file__).parents[2] / "examples" / "devid" / "provision.sh"
    arguments = [agent_config, out, devid_ca.intermediate_path, ca_key, "rack2-node3"]
    subprocess.run(
        ["sh", str(script), *map(str, arguments)],
        check=True,
        capture_output=True,
        env={**os.environ, "SPIRE_TPM_ATTESTOR": str(Path(sys.executable).parent / CLI)},
    )
    agent.configure(
        hcl(
            tcti=swtpm.tcti,
            devid_cert_path=str(out / "devid-chain.pem"),
            devid_key_path=str(out / "devid.tss.pem"),
        )
    )
    server.configure(
        hcl(
            ek_ca_path=str(ek_ca.bundle_path),
            devid_ca_path=str(devid_ca.root_path),
            require_devid=True,
        )
    )
    assert "devid:subject:cn:rack2-node3" in relay_attestation(agent, server).selectors
