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
from spire_tpm_attestor.errors import NotProven
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.runtime.host import AttestationFailed
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from spire_tpm_attestor.tpm.structures import parse_signature, parse_tpm2b_public
from spire_tpm_attestor.tpm.verify import verify_signature
from tests.integration.platform_setup import (
    DevIDFiles,
    DevIDNode,
    Exchange,
    Rewrite,
    import_software_devid,
    provision_devid,
)
from tests.integration.plugins import hcl, provisioned_hash
from tests.integration.tpm_state import leftover_handles
from tests.unit.tpm_builders import marshal_public, tpm_sign

pytestmark = pytest.mark.swtpm

DEVID_ATTRIBUTES = 0x00040072  # fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, sign
ECDSA = 0x0018
CLI = "spire-tpm-attestor"


@pytest.mark.parametrize(("algorithm", "key_form"), [("ecc", "pem"), ("rsa", "blobs")])
def test_devid_is_proven_and_becomes_selectors(
    devid_node: DevIDNode, algorithm: str, key_form: str
) -> None:
    node = devid_node
    devid = provision_devid(
        node.swtpm.tcti, node.devid_ca, node.directory, algorithm, subject="rack1-node7"
    )
    node.agent.configure(hcl(tcti=node.swtpm.tcti, **devid.agent_options(key_form)))
    node.server.configure(
        hcl(
            ek_ca_path=str(node.ek_ca.bundle_path),
            devid_ca_path=str(node.devid_ca.root_path),
            require_devid=True,
            agent_path_template="{{ .PluginName }}/{{ .DevIDSubjectCN }}",
        )
    )
    result = node.attest()
    assert result.spiffe_id == "spiffe://example.org/spire/agent/tpm/rack1-node7"
    der = devid.certificate.public_bytes(serialization.Encoding.DER)
    assert {
        "devid:subject:cn:rack1-node7",
        "devid:issuer:cn:Test DevID EK Intermediate CA",
        f"devid:serialnumber:{devid.certificate.serial_number:x}",
        f"devid:fingerprint:{hashlib.sha256(der).hexdigest()}",
    } <= set(result.selectors), result.selectors
    assert result.challenge_rounds == 1
    assert leftover_handles(node.swtpm.tcti) == []


def test_devid_of_another_tpm_fails_the_agent_cleanly(devid_node: DevIDNode) -> None:
    with SWTPM() as other:
        devid = provision_devid(other.tcti, devid_node.devid_ca, devid_node.directory)
    devid_node.configure(devid)
    with pytest.raises(AttestationFailed) as failure:
        devid_node.attest()
    assert failure.value.side == "agent" and "loading the DevID key" in failure.value.details
    assert leftover_handles(devid_node.swtpm.tcti) == []


def test_devid_with_pcrs_and_template_fields(devid_node: DevIDNode, devid: DevIDFiles) -> None:
    template = "{{ .DevIDSerialNumber }}/{{ .DevIDFingerprint }}"
    devid_node.configure(
        devid,
        require_devid=True,
        agent_path_template=template,
        pcr_selection={"sha256": [0, 7]},
    )
    result = devid_node.attest()
    der = devid.certificate.public_bytes(serialization.Encoding.DER)
    serial = f"{devid.certificate.serial_number:x}"
    assert result.spiffe_id.endswith(f"/{serial}/{hashlib.sha256(der).hexdigest()}")
    assert sum(s.startswith("pcr:sha256:") for s in result.selectors) == 2


def test_devid_is_ignored_by_a_server_without_devid_ca(
    devid_node: DevIDNode, devid: DevIDFiles
) -> None:
    node = devid_node
    node.agent.configure(hcl(tcti=node.swtpm.tcti, **devid.agent_options()))
    node.server.configure(hcl(ek_ca_path=str(node.ek_ca.bundle_path)))
    result = node.attest()
    assert not any(s.startswith("devid:") for s in result.selectors)


def test_devid_from_another_ca_is_denied(devid_node: DevIDNode) -> None:
    rogue = TestCA.create(devid_node.directory / "rogue", name="Rogue DevID")
    devid = provision_devid(devid_node.swtpm.tcti, rogue, devid_node.directory / "devid")
    devid_node.configure(devid)
    audit = devid_node.expect_rejection(
        grpc.StatusCode.PERMISSION_DENIED, "does not chain to devid_ca_path"
    )
    assert audit["check"] == "devid_cert_chain"


def test_devid_ca_directory_is_reloaded_when_it_changes(devid_node: DevIDNode) -> None:
    tmp_path = devid_node.directory
    new_ca = TestCA.create(tmp_path / "new-ca", name="New DevID")
    devid = provision_devid(devid_node.swtpm.tcti, new_ca, tmp_path / "devid")
    trusted = tmp_path / "devid-ca.d"
    trusted.mkdir()
    shutil.copy(devid_node.devid_ca.root_path, trusted / "old-root.pem")
    devid_node.configure(devid, devid_ca_path=str(trusted))
    devid_node.expect_rejection(grpc.StatusCode.PERMISSION_DENIED, "devid_ca_path")
    # The operator adds the new CA: no restart, no reconfiguration.
    shutil.copy(new_ca.root_path, trusted / "new-root.pem")
    deadline = time.monotonic() + 10
    while True:
        try:
            result = devid_node.attest()
            break
        except AttestationFailed:
            assert time.monotonic() < deadline, "the new DevID CA was not picked up"
            time.sleep(0.1)
    assert "devid:issuer:cn:New DevID EK Intermediate CA" in result.selectors


def test_required_devid_missing_is_denied(devid_node: DevIDNode) -> None:
    devid_node.configure(None, require_devid=True)
    audit = devid_node.expect_rejection(grpc.StatusCode.PERMISSION_DENIED, "no DevID")
    assert audit["check"] == "devid_required"


def test_known_ek_and_valid_devid_are_both_required(devid_node: DevIDNode) -> None:
    node = devid_node
    pub_hash = provisioned_hash(node.swtpm, node.ek_ca, "rsa2048")
    hashes = node.directory / "hashes"
    hashes.mkdir()
    devid = provision_devid(node.swtpm.tcti, node.devid_ca, node.directory / "devid")
    both = {"ek_policy": "allowlist", "hash_path": str(hashes), "require_devid": True}

    # A valid DevID does not make up for an unknown EK...
    node.configure(devid, **both)
    audit = node.expect_rejection(grpc.StatusCode.PERMISSION_DENIED, "not in the allow")
    assert audit["check"] == "allowlist"
    # ...nor a known EK for a missing DevID.
    (hashes / pub_hash).write_text("")
    node.configure(None, **both)
    node.expect_rejection(grpc.StatusCode.PERMISSION_DENIED, "sent no DevID")
    # Both: admitted.
    node.configure(devid, **both)
    assert f"pub_hash:{pub_hash}" in node.attest().selectors


def test_key_imported_from_software_is_not_a_devid(devid_node: DevIDNode) -> None:
    # A key that existed outside the TPM, with a genuine certificate: the TPM loads it,
    # certifies it and signs with it, but its public area cannot claim fixedTPM.
    node = devid_node
    devid = import_software_devid(node.swtpm.tcti, node.devid_ca, node.directory)
    node.agent.configure(hcl(tcti=node.swtpm.tcti, **devid.agent_options("blobs")))
    node.server.configure(
        hcl(ek_ca_path=str(node.ek_ca.bundle_path), devid_ca_path=str(node.devid_ca.root_path))
    )
    audit = node.expect_rejection(grpc.StatusCode.PERMISSION_DENIED, "FIXED_TPM is not set")
    assert audit["check"] == "devid_key_attributes"


# -- a man in the middle rewrites the DevID evidence -------------------------------------


def _denied(exchange: Exchange, words: str) -> None:
    assert exchange.error is not None, "the server admitted a tampered attestation"
    assert exchange.error.code() == grpc.StatusCode.PERMISSION_DENIED, exchange.error.details()
    assert words in (exchange.error.details() or ""), exchange.error.details()


def test_certificate_for_another_key_is_denied(devid_node: DevIDNode, devid: DevIDFiles) -> None:
    devid_node.configure(devid)
    # A genuine certificate from the trusted CA, for a key that is not the DevID public area.
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    certificate = devid_node.devid_ca.issue_devid_certificate(other, "node-7")

    def swap_certificate(payload: attestation_pb2.Payload) -> None:
        payload.devid_certificates[0] = certificate.public_bytes(serialization.Encoding.DER)

    exchange = devid_node.intercept(payload=swap_certificate)
    _denied(exchange, "DevID certificate key differs from the DevID public area")


def test_devid_swapped_for_a_software_key_fails_residency(
    devid_node: DevIDNode, devid: DevIDFiles
) -> None:
    # The attacker holds a software key with a valid certificate and claims it is in the
    # TPM; everything verifies except the AK's certification of what is really loaded.
    devid_node.configure(devid)
    software = ec.generate_private_key(ec.SECP256R1())
    certificate = devid_node.devid_ca.issue_devid_certificate(software.public_key(), "node-7")

    def claim_software_key(payload: attestation_pb2.Payload) -> None:
        payload.devid_public = marshal_public(software.public_key(), attributes=DEVID_ATTRIBUTES)
        payload.devid_certificates[0] = certificate.public_bytes(serialization.Encoding.DER)

    def sign_in_software(response: attestation_pb2.ChallengeResponse) -> None:
        signed = wire.devid_signed_data(challenges[-1].nonce, response.agent_nonce)
        response.devid_signature = tpm_sign(software, signed, ECDSA)

    challenges: list[attestation_pb2.Challenge] = []
    exchange = devid_node.intercept(
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
    devid_node: DevIDNode, devid: DevIDFiles, change: Rewrite, words: str
) -> None:
    devid_node.configure(devid)
    _denied(devid_node.intercept(response=change), words)


def test_certification_over_an_old_nonce_is_denied(
    devid_node: DevIDNode, devid: DevIDFiles
) -> None:
    devid_node.configure(devid)
    earlier = devid_node.intercept()
    assert earlier.challenge is not None and earlier.attributes is not None

    def replay_nonce(challenge: attestation_pb2.Challenge) -> None:
        challenge.nonce = earlier.challenge.nonce  # type: ignore[union-attr]

    exchange = devid_node.intercept(challenge=replay_nonce)
    _denied(exchange, "DevID certification does not verify: attestation extraData")


def test_agent_never_signs_the_server_nonce_alone(devid_node: DevIDNode, devid: DevIDFiles) -> None:
    devid_node.configure(devid)
    exchanges = [devid_node.intercept() for _ in range(3)]
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
            with pytest.raises(NotProven):
                verify_signature(area, chosen_by_server, signature)
    assert len(agent_nonces) == len(exchanges)  # fresh every time


def test_example_provisioning_script_with_an_openssl_ca(devid_node: DevIDNode) -> None:
    node, tmp_path = devid_node, devid_node.directory
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca_key = tmp_path / "ca-key.pem"
    ca_key.write_bytes(
        node.devid_ca.intermediate_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    agent_config = tmp_path / "agent.hcl"
    agent_config.write_text(hcl(tcti=node.swtpm.tcti))
    out = tmp_path / "devid"
    script = Path(__file__).parents[2] / "examples" / "devid" / "provision.sh"
    arguments = [agent_config, out, node.devid_ca.intermediate_path, ca_key, "rack2-node3"]
    subprocess.run(
        ["sh", str(script), *map(str, arguments)],
        check=True,
        capture_output=True,
        env={**os.environ, "SPIRE_TPM_ATTESTOR": str(Path(sys.executable).parent / CLI)},
    )
    node.agent.configure(
        hcl(
            tcti=node.swtpm.tcti,
            devid_cert_path=str(out / "devid-chain.pem"),
            devid_key_path=str(out / "devid.tss.pem"),
        )
    )
    node.server.configure(
        hcl(
            ek_ca_path=str(node.ek_ca.bundle_path),
            devid_ca_path=str(node.devid_ca.root_path),
            require_devid=True,
        )
    )
    assert "devid:subject:cn:rack2-node3" in node.attest().selectors
