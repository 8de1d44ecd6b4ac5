"""An agent's TPM in software: EK, AK, PCRs, DevID, and the answers a TPM gives.

`activate` is TPM2_ActivateCredential with KDFa/KDFe written out as the specification
states them, independently of `spire_tpm_attestor.tpm.credential`, so a round trip proves
the server's MakeCredential is what a TPM unwraps. `SoftwareTPM` answers a whole
challenge (activation, quote, DevID certification and signature) with software keys, so
the server's steps can be run in-process, in milliseconds, without swtpm.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from spire_tpm_attestor import wire
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.tpm.constants import TPM_ALG, TPM_ST, digest_size, hash_algorithm
from spire_tpm_attestor.tpm.structures import PublicArea, Reader, parse_tpm2b_public
from tests.unit.tpm_builders import (
    DEVID_ATTRIBUTES,
    EK_ATTRIBUTES,
    marshal_attest,
    marshal_public,
    marshal_selection,
    sha256,
    tpm_sign,
)

try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # cryptography < 47
    from cryptography.hazmat.primitives.ciphers.modes import CFB


class IntegrityError(Exception):
    pass


def kdfa(alg: int, key: bytes, label: bytes, context: bytes, bits: int) -> bytes:
    out, counter = b"", 1
    while len(out) * 8 < bits:
        mac = hmac.HMAC(key, hash_algorithm(alg))
        mac.update(struct.pack(">I", counter) + label + b"\x00" + context + struct.pack(">I", bits))
        out += mac.finalize()
        counter += 1
    return out[: bits // 8]


def kdfe(alg: int, z: bytes, use: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    out, counter = b"", 1
    while len(out) * 8 < bits:
        digest = hashes.Hash(hash_algorithm(alg))
        digest.update(struct.pack(">I", counter) + z + use + party_u + party_v)
        out += digest.finalize()
        counter += 1
    return out[: bits // 8]


def activate(
    ek_private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    ek: PublicArea,
    object_name: bytes,
    id_object: bytes,
    encrypted_secret: bytes,
) -> bytes:
    """TPM2_ActivateCredential in software (TPM 2.0 Part 1 §24, Part 3 §12.5)."""
    alg = ek.name_alg
    digest_bits = hash_algorithm(alg).digest_size * 8
    blob = Reader(id_object, "id_object").tpm2b("credential", 1024)
    outer = Reader(blob, "blob")
    integrity = outer.tpm2b("integrity", 64)
    enc_identity = blob[2 + len(integrity) :]
    seed_blob = Reader(encrypted_secret, "secret").tpm2b("secret", 1024)
    if isinstance(ek_private, rsa.RSAPrivateKey):
        h = hash_algorithm(alg)
        seed = ek_private.decrypt(seed_blob, padding.OAEP(padding.MGF1(h), h, b"IDENTITY\x00"))
    else:
        r = Reader(seed_blob, "point")
        x, y = r.tpm2b("x", 66), r.tpm2b("y", 66)
        r.finish()
        ephemeral = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ek_private.curve
        ).public_key()
        z = ek_private.exchange(ec.ECDH(), ephemeral)
        assert ek.ecc is not None
        seed = kdfe(alg, z, b"IDENTITY\x00", x, ek.ecc.x, digest_bits)
    mac = hmac.HMAC(kdfa(alg, seed, b"INTEGRITY", b"", digest_bits), hash_algorithm(alg))
    mac.update(enc_identity + object_name)
    if mac.finalize() != integrity:
        raise IntegrityError("integrity check failed")
    sym = kdfa(alg, seed, b"STORAGE", object_name, ek.symmetric.key_bits)
    decryptor = Cipher(algorithms.AES(sym), CFB(bytes(16))).decryptor()
    plain = decryptor.update(enc_identity) + decryptor.finalize()
    return Reader(plain, "credential").tpm2b("secret", 64)


def software_ek_public(
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    name_alg: int = TPM_ALG.SHA256,
    key_bits: int = 128,
) -> bytes:
    """The TPM2B_PUBLIC of an EK (restricted decryption key, AES-CFB) for a software key."""
    return marshal_public(
        private.public_key(),
        attributes=EK_ATTRIBUTES,
        name_alg=name_alg,
        symmetric=(TPM_ALG.AES, key_bits, TPM_ALG.CFB),
    )


def software_ek(
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    name_alg: int = TPM_ALG.SHA256,
    key_bits: int = 128,
) -> PublicArea:
    return parse_tpm2b_public(software_ek_public(private, name_alg, key_bits))


PCRKey = tuple[int, int]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class SoftwareTPM:
    """The keys and PCRs of one agent's TPM; PCRs not in `pcrs` read as zeros."""

    ek_key: PrivateKey = field(default_factory=_p256)
    ak_key: ec.EllipticCurvePrivateKey = field(default_factory=_p256)
    devid_key: ec.EllipticCurvePrivateKey | None = None
    pcrs: dict[PCRKey, bytes] = field(default_factory=dict)
    event_log: bytes = b""  # sent when the challenge asks for it

    @property
    def ek_public(self) -> bytes:
        return software_ek_public(self.ek_key)

    @property
    def ek(self) -> PublicArea:
        return parse_tpm2b_public(self.ek_public)

    @property
    def pub_hash(self) -> str:
        """The EK hash the server names this TPM by: SHA-256 of the EK's DER SPKI."""
        spki = self.ek_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).hexdigest()

    @property
    def ak_public(self) -> bytes:
        """A restricted ECDSA-SHA256 signing key, as the agent's AK template makes it."""
        return marshal_public(self.ak_key.public_key(), scheme=(TPM_ALG.ECDSA, TPM_ALG.SHA256))

    @property
    def ak(self) -> PublicArea:
        return parse_tpm2b_public(self.ak_public)

    @property
    def devid_public(self) -> bytes:
        assert self.devid_key is not None, "this TPM has no DevID key"
        return marshal_public(self.devid_key.public_key(), attributes=DEVID_ATTRIBUTES)

    def payload(
        self,
        ek_certificate: bytes = b"",
        ek_intermediates: Sequence[bytes] = (),
        devid_certificates: Sequence[bytes] = (),
    ) -> attestation_pb2.Payload:
        """The agent's first message; the DevID public area goes with its certificates."""
        return attestation_pb2.Payload(
            version=wire.PROTOCOL_VERSION,
            ek_public=self.ek_public,
            ek_certificate=ek_certificate,
            ek_intermediates=list(ek_intermediates),
            ak_public=self.ak_public,
            devid_certificates=list(devid_certificates),
            devid_public=self.devid_public if devid_certificates else b"",
        )

    def answer(self, challenge: attestation_pb2.Challenge) -> attestation_pb2.ChallengeResponse:
        """What the agent sends back: the activated secret, the quote the challenge asks
        for, with a DevID the AK's certification of it and its signature, and the event log
        if asked."""
        response = attestation_pb2.ChallengeResponse(
            version=wire.PROTOCOL_VERSION,
            secret=activate(
                self.ek_key,
                self.ek,
                self.ak.name(),
                challenge.credential_blob,
                challenge.encrypted_secret,
            ),
        )
        banks = [(bank.hash_alg, sorted(bank.indices)) for bank in challenge.pcr_selection]
        if banks:
            self.quote(response, challenge.nonce, banks)
        if self.devid_key is not None:
            self.prove_devid(response, challenge.nonce)
        if challenge.want_event_log:
            response.event_log = self.event_log
        return response

    def pcr(self, key: PCRKey) -> bytes:
        return self.pcrs.get(key, bytes(digest_size(key[0])))

    def quote(
        self,
        response: attestation_pb2.ChallengeResponse,
        nonce: bytes,
        banks: list[tuple[int, list[int]]],
    ) -> None:
        """TPM2_Quote by the AK over `nonce`: banks in order, indices ascending."""
        keys = [(bank, index) for bank, indices in banks for index in indices]
        attest = marshal_attest(
            extra_data=nonce,
            selection=marshal_selection(banks),
            pcr_digest=sha256(b"".join(self.pcr(key) for key in keys)),
        )
        response.quote = attest
        response.quote_signature = tpm_sign(self.ak_key, attest, TPM_ALG.ECDSA)
        for bank, index in keys:
            response.pcr_values.add(hash_alg=bank, index=index, digest=self.pcr((bank, index)))

    def prove_devid(self, response: attestation_pb2.ChallengeResponse, nonce: bytes) -> None:
        """TPM2_Certify of the DevID by the AK, and the DevID's signature over both nonces."""
        assert self.devid_key is not None
        devid_name = parse_tpm2b_public(self.devid_public).name()
        response.devid_certify, response.devid_certify_signature = self.certify(nonce, devid_name)
        response.agent_nonce = os.urandom(32)
        response.devid_signature = devid_signature(self.devid_key, nonce, response.agent_nonce)

    def certify(self, nonce: bytes, name: bytes) -> tuple[bytes, bytes]:
        """TPM2_Certify by the AK, over `nonce`, of the object called `name`."""
        attest = marshal_attest(
            extra_data=nonce, attest_type=TPM_ST.ATTEST_CERTIFY, certified_name=name
        )
        return attest, tpm_sign(self.ak_key, attest, TPM_ALG.ECDSA)


def devid_signature(key: ec.EllipticCurvePrivateKey, nonce: bytes, agent_nonce: bytes) -> bytes:
    """What the agent's DevID key signs: SHA-256(server nonce || agent nonce)."""
    return tpm_sign(key, wire.devid_signed_data(nonce, agent_nonce), TPM_ALG.ECDSA)
