"""Software nodes for the process benchmark: what agents send, and the keys to answer.

Each node has an RSA-2048 EK (TCG low-range template L-1: restricted decryption key,
AES-128-CFB, SHA-256) and an RSA-2048 AK, both software keys; the Go driver answers the
server's challenge with the EK private key (TPM2_ActivateCredential in software). Key
generation is slow in Python, so a few keys are reused, and "a new node each time" means
a new EK certificate each time (fresh serial, fresh signature by the intermediate), which
is what the server's signature cache keys on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from spire_tpm_attestor import wire
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.tpm.constants import TPM_ALG
from spire_tpm_attestor.tpm.structures import parse_tpm2b_public
from tests.unit.tpm_builders import EK_ATTRIBUTES, marshal_public

try:  # the layout of issue 9; before it, the test CA lived next to SWTPM
    from spire_tpm_attestor.testing.swtpm import TestCA  # type: ignore[import-not-found]
except ImportError:
    from spire_tpm_attestor.testing.ca import TestCA

# TCG EK Credential Profile, template L-1: PolicySecret(TPM_RH_ENDORSEMENT).
EK_AUTH_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
EK_SYMMETRIC = (TPM_ALG.AES, 128, TPM_ALG.CFB)
AK_SCHEME = (TPM_ALG.RSASSA, TPM_ALG.SHA256)


@dataclass(frozen=True)
class SoftwareNode:
    ek_key: rsa.RSAPrivateKey
    ek_public: bytes  # TPM2B_PUBLIC
    ak_public: bytes  # TPM2B_PUBLIC
    ak_name: bytes

    @classmethod
    def create(cls) -> SoftwareNode:
        ek_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ak_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ek_public = marshal_public(
            ek_key.public_key(),
            attributes=EK_ATTRIBUTES,
            symmetric=EK_SYMMETRIC,
            auth_policy=EK_AUTH_POLICY,
        )
        ak_public = marshal_public(ak_key.public_key(), scheme=AK_SCHEME)
        return cls(ek_key, ek_public, ak_public, parse_tpm2b_public(ak_public).name())

    @property
    def ek_private_der(self) -> bytes:
        return self.ek_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def ek_hash(self) -> str:
        """The allowlist's EK hash: SHA-256 of the DER SubjectPublicKeyInfo, in hex."""
        spki = self.ek_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).hexdigest()

    def payload(self, ek_certificate: bytes = b"") -> bytes:
        return attestation_pb2.Payload(
            version=wire.PROTOCOL_VERSION,
            ek_public=self.ek_public,
            ek_certificate=ek_certificate,
            ak_public=self.ak_public,
        ).SerializeToString()


def rsa_ca(directory: Path) -> TestCA:
    """An RSA-2048 root and intermediate; `bundle_path` holds both."""
    return TestCA.create(directory, name="procbench", key_type="rsa")


def chain_nodes(nodes: list[SoftwareNode], ca: TestCA, count: int) -> list[dict[str, object]]:
    """`count` attestations, each with an EK certificate the server has never seen."""
    out: list[dict[str, object]] = []
    for number in range(count):
        index = number % len(nodes)
        node = nodes[index]
        certificate = ca.issue_ek_certificate(node.ek_key.public_key())
        der = certificate.public_bytes(serialization.Encoding.DER)
        out.append(_entry(node.payload(der), index, node.ak_name))
    return out


def allowlist_nodes(
    nodes: list[SoftwareNode], directory: Path, fillers: int
) -> list[dict[str, object]]:
    """One entry file per node in a flat hash directory, among `fillers` other entries;
    the payloads carry no EK certificate (a TPM without one, or one nobody checks)."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(fillers):
        entry = {"name": f"filler-{number}", "labels": {"rack": "r9"}}
        (directory / os.urandom(32).hex()).write_text(json.dumps(entry))
    out: list[dict[str, object]] = []
    for index, node in enumerate(nodes):
        entry = {"name": f"bench-{index}", "labels": {"rack": "r1"}}
        (directory / node.ek_hash).write_text(json.dumps(entry))
        out.append(_entry(node.payload(), index, node.ak_name))
    return out


def _entry(payload: bytes, ek_key: int, ak_name: bytes) -> dict[str, object]:
    return {
        "payload": base64.b64encode(payload).decode(),
        "ek_key": ek_key,
        "ak_name": base64.b64encode(ak_name).decode(),
    }
