"""MakeCredential: wire layout against swtpm EKs, round trip through a software activator.

The activation proof against a real TPM (swtpm, RSA L-1, ECC L-2 and ECC H-3 EKs, RSA
and ECC AKs) was run when these primitives were written; here an independent software
TPM2_ActivateCredential, with KDFa/KDFe written out as the specification states them,
unwraps what make_credential produced.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spire_tpm_attestor.errors import MalformedInput, NotProven
from spire_tpm_attestor.tpm.constants import TPM_ALG, TPMA_OBJECT, hash_algorithm
from spire_tpm_attestor.tpm.credential import make_credential
from spire_tpm_attestor.tpm.keys import check_ek_template
from spire_tpm_attestor.tpm.structures import parse_tpm2b_public
from tests.unit.software_tpm import IntegrityError, activate, software_ek
from tests.unit.tpm_builders import vector

EKS = vector("swtpm_ek.json")
AK_NAME = bytes.fromhex(vector("swtpm_ak_rsa.json")["ak_name"])


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.mark.parametrize(
    ("curve", "name_alg", "key_bits"),
    [
        (ec.SECP256R1(), TPM_ALG.SHA256, 128),  # L-2
        (ec.SECP384R1(), TPM_ALG.SHA384, 256),  # H-3
        (ec.SECP256R1(), TPM_ALG.SHA512, 192),
    ],
)
def test_round_trip_ecc(curve: ec.EllipticCurve, name_alg: int, key_bits: int) -> None:
    private = ec.generate_private_key(curve)
    ek = software_ek(private, name_alg, key_bits)
    secret = bytes(range(32))
    id_object, encrypted = make_credential(ek, AK_NAME, secret)
    assert activate(private, ek, AK_NAME, id_object, encrypted) == secret


@pytest.mark.parametrize(("name_alg", "key_bits"), [(TPM_ALG.SHA256, 128), (TPM_ALG.SHA384, 256)])
def test_round_trip_rsa(rsa_private: rsa.RSAPrivateKey, name_alg: int, key_bits: int) -> None:
    ek = software_ek(rsa_private, name_alg, key_bits)
    for secret in (b"\x01", bytes(range(32))):
        id_object, encrypted = make_credential(ek, AK_NAME, secret)
        assert activate(rsa_private, ek, AK_NAME, id_object, encrypted) == secret


def test_credential_is_bound_to_the_object_name(rsa_private: rsa.RSAPrivateKey) -> None:
    ek = software_ek(rsa_private)
    id_object, encrypted = make_credential(ek, AK_NAME, bytes(32))
    other_name = AK_NAME[:-1] + bytes([AK_NAME[-1] ^ 1])
    with pytest.raises(IntegrityError):
        activate(rsa_private, ek, other_name, id_object, encrypted)


def test_each_credential_uses_a_fresh_seed(rsa_private: rsa.RSAPrivateKey) -> None:
    ek = software_ek(rsa_private)
    assert make_credential(ek, AK_NAME, bytes(32)) != make_credential(ek, AK_NAME, bytes(32))


@pytest.mark.parametrize(
    ("kind", "id_object_size", "secret_size"),
    [("rsa2048", 70, 258), ("ecc256", 70, 70), ("ecc384", 86, 102)],
)
def test_wire_layout_for_swtpm_eks(kind: str, id_object_size: int, secret_size: int) -> None:
    """Sizes of the TPM2Bs ActivateCredential accepted on swtpm for these very EKs."""
    ek = parse_tpm2b_public(bytes.fromhex(EKS[kind]["ek_public"]))
    id_object, encrypted = make_credential(ek, AK_NAME, bytes(32))
    assert (len(id_object), len(encrypted)) == (id_object_size, secret_size)
    assert struct.unpack(">H", id_object[:2])[0] == id_object_size - 2
    digest_size = hash_algorithm(ek.name_alg).digest_size
    assert struct.unpack(">H", id_object[2:4])[0] == digest_size  # integrity HMAC
    assert struct.unpack(">H", encrypted[:2])[0] == secret_size - 2


def test_secret_and_name_limits(rsa_private: rsa.RSAPrivateKey) -> None:
    ek = software_ek(rsa_private)
    with pytest.raises(ValueError, match="1 to 32 bytes"):
        make_credential(ek, AK_NAME, bytes(33))
    with pytest.raises(ValueError, match="1 to 32 bytes"):
        make_credential(ek, AK_NAME, b"")
    with pytest.raises(MalformedInput, match="Name"):
        make_credential(ek, AK_NAME[:-1], bytes(32))
    with pytest.raises(MalformedInput, match="Name"):
        make_credential(ek, b"\x00", bytes(32))
    with pytest.raises(MalformedInput, match="Name"):
        make_credential(ek, b"\x00\x12" + AK_NAME[2:], bytes(32))


def test_an_ek_too_small_for_oaep_is_malformed_input() -> None:
    """cryptography's ValueError (no room for OAEP-SHA512 in 1024 bits) does not leak."""
    small = software_ek(rsa.generate_private_key(65537, 1024), name_alg=TPM_ALG.SHA512)
    with pytest.raises(MalformedInput):
        make_credential(small, AK_NAME, bytes(32))


# --- check_ek_template -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa2048", "ecc256", "ecc384"])
def test_swtpm_eks_are_ek_shaped(kind: str) -> None:
    check_ek_template(parse_tpm2b_public(bytes.fromhex(EKS[kind]["ek_public"])))


@pytest.mark.parametrize(
    "attribute",
    [
        TPMA_OBJECT.FIXED_TPM,
        TPMA_OBJECT.FIXED_PARENT,
        TPMA_OBJECT.SENSITIVE_DATA_ORIGIN,
        TPMA_OBJECT.RESTRICTED,
        TPMA_OBJECT.DECRYPT,
    ],
)
def test_ek_template_requires_attribute(attribute: TPMA_OBJECT) -> None:
    ek = parse_tpm2b_public(bytes.fromhex(EKS["rsa2048"]["ek_public"]))
    broken = replace(ek, attributes=ek.attributes & ~attribute)
    with pytest.raises(NotProven, match=f"{attribute.name} is not set"):
        check_ek_template(broken)
    # make_credential refuses to wrap to such a key.
    with pytest.raises(NotProven, match=f"{attribute.name} is not set"):
        make_credential(broken, AK_NAME, bytes(32))


def test_ek_template_rejects_signing_keys_and_bad_parameters() -> None:
    ek = parse_tpm2b_public(bytes.fromhex(EKS["ecc256"]["ek_public"]))
    with pytest.raises(NotProven, match="SIGN_ENCRYPT is set"):
        check_ek_template(replace(ek, attributes=ek.attributes | TPMA_OBJECT.SIGN_ENCRYPT))
    with pytest.raises(NotProven, match="nameAlg SHA1"):
        check_ek_template(replace(ek, name_alg=TPM_ALG.SHA1))
    with pytest.raises(NotProven, match="NULL-NULL is not AES-CFB"):
        check_ek_template(
            replace(ek, symmetric=replace(ek.symmetric, alg=TPM_ALG.NULL, mode=TPM_ALG.NULL))
        )
    with pytest.raises(NotProven, match="AES-CBC is not AES-CFB"):
        check_ek_template(replace(ek, symmetric=replace(ek.symmetric, mode=TPM_ALG.CBC)))
    with pytest.raises(NotProven, match="AES key size 64"):
        check_ek_template(replace(ek, symmetric=replace(ek.symmetric, key_bits=64)))
