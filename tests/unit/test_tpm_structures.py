"""TPM structure parsing: real swtpm output plus malformed and oversized inputs."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spire_tpm_attestor.errors import MalformedInput
from spire_tpm_attestor.tpm.constants import (
    TPM_ALG,
    TPM_ECC,
    TPM_GENERATED_VALUE,
    TPM_ST,
    TPMA_OBJECT,
)
from spire_tpm_attestor.tpm.structures import (
    PCRSelection,
    Reader,
    parse_attest,
    parse_signature,
    parse_tpm2b_public,
    public_key_equals,
)
from tests.unit.tpm_builders import (
    area,
    marshal_attest,
    marshal_public,
    marshal_selection,
    tpm2b,
    vector,
)

EKS = vector("swtpm_ek.json")
AK_RSA = vector("swtpm_ak_rsa.json")
AK_ECC = vector("swtpm_ak_ecc.json")


# --- TPM2B_PUBLIC ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "key_type", "name_alg", "attributes", "key_bits"),
    [
        ("rsa2048", TPM_ALG.RSA, TPM_ALG.SHA256, 0x000300B2, 128),
        ("ecc256", TPM_ALG.ECC, TPM_ALG.SHA256, 0x000300B2, 128),
        ("ecc384", TPM_ALG.ECC, TPM_ALG.SHA384, 0x000300F2, 256),
    ],
)
def test_parse_swtpm_ek(
    kind: str, key_type: int, name_alg: int, attributes: int, key_bits: int
) -> None:
    ek = parse_tpm2b_public(bytes.fromhex(EKS[kind]["ek_public"]))
    assert (ek.type, ek.name_alg, ek.attributes) == (key_type, name_alg, attributes)
    assert (ek.symmetric.alg, ek.symmetric.key_bits, ek.symmetric.mode) == (
        TPM_ALG.AES,
        key_bits,
        TPM_ALG.CFB,
    )
    assert ek.scheme.alg == TPM_ALG.NULL
    # The Name the TPM reported from TPM2_ReadPublic.
    assert ek.name() == bytes.fromhex(EKS[kind]["ek_name"])


def test_parse_swtpm_ek_details() -> None:
    rsa_ek = parse_tpm2b_public(bytes.fromhex(EKS["rsa2048"]["ek_public"]))
    assert rsa_ek.rsa is not None and rsa_ek.ecc is None
    assert (rsa_ek.rsa.key_bits, rsa_ek.rsa.exponent, len(rsa_ek.rsa.modulus)) == (2048, 0, 256)
    assert rsa_ek.auth_policy.hex().startswith("837197674484b3f8")
    key = rsa_ek.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.public_numbers().e == 65537

    ecc_ek = parse_tpm2b_public(bytes.fromhex(EKS["ecc384"]["ek_public"]))
    assert ecc_ek.ecc is not None and ecc_ek.rsa is None
    assert ecc_ek.ecc.curve == TPM_ECC.NIST_P384 and ecc_ek.ecc.kdf.alg == TPM_ALG.NULL
    assert isinstance(ecc_ek.public_key(), ec.EllipticCurvePublicKey)


@pytest.mark.parametrize("ak", [AK_RSA, AK_ECC], ids=["rsa", "ecc"])
def test_parse_swtpm_ak(ak: dict[str, str]) -> None:
    area_ = parse_tpm2b_public(bytes.fromhex(ak["ak_public"]))
    assert area_.attributes == 0x00050472
    assert area_.scheme.hash == TPM_ALG.SHA256
    assert area_.name() == bytes.fromhex(ak["ak_name"])
    assert area_.raw == bytes.fromhex(ak["ak_public"])[2:]


def test_public_key_equals() -> None:
    ek = parse_tpm2b_public(bytes.fromhex(EKS["rsa2048"]["ek_public"]))
    ecc_ek = parse_tpm2b_public(bytes.fromhex(EKS["ecc256"]["ek_public"]))
    assert public_key_equals(ek, ek.public_key())
    assert public_key_equals(ecc_ek, ecc_ek.public_key())
    assert not public_key_equals(ek, ecc_ek.public_key())
    assert not public_key_equals(ecc_ek, ek.public_key())
    other = rsa.generate_private_key(65537, 2048).public_key()
    assert not public_key_equals(ek, other)
    # Same modulus, different exponent.
    assert ek.rsa is not None
    assert not public_key_equals(replace(ek, rsa=replace(ek.rsa, exponent=3)), ek.public_key())
    # Same coordinates on another curve are not the same key.
    p384 = parse_tpm2b_public(bytes.fromhex(EKS["ecc384"]["ek_public"]))
    assert p384.ecc is not None
    assert not public_key_equals(
        replace(p384, ecc=replace(p384.ecc, curve=TPM_ECC.NIST_P256)), p384.public_key()
    )


@pytest.mark.parametrize("kind", ["rsa2048", "ecc256"])
def test_every_truncation_is_rejected(kind: str) -> None:
    data = bytes.fromhex(EKS[kind]["ek_public"])
    for cut in range(len(data)):
        with pytest.raises(MalformedInput):
            parse_tpm2b_public(data[:cut])


def test_trailing_bytes_are_rejected() -> None:
    data = bytes.fromhex(AK_RSA["ak_public"])
    with pytest.raises(MalformedInput, match="trailing"):
        parse_tpm2b_public(data + b"\x00")
    # Extra bytes inside the TPM2B but after the TPMT_PUBLIC.
    inner = data[2:] + b"\x00"
    with pytest.raises(MalformedInput, match="trailing"):
        parse_tpm2b_public(tpm2b(inner))


def test_oversized_fields_are_rejected() -> None:
    key = rsa.generate_private_key(65537, 2048).public_key()
    with pytest.raises(MalformedInput, match="authPolicy"):
        parse_tpm2b_public(marshal_public(key, auth_policy=bytes(65)))
    body = bytes.fromhex(AK_RSA["ak_public"])[2:]
    # Claim a 513-byte modulus (keyBits stays 2048; the size limit must fire first).
    big = body[: -2 - 256] + tpm2b(bytes(513))
    with pytest.raises(MalformedInput, match=r"unique\.rsa is 513 bytes"):
        parse_tpm2b_public(tpm2b(big))
    with pytest.raises(MalformedInput, match="limit is 1024"):
        parse_tpm2b_public(tpm2b(bytes(1023)))
    # keyBits beyond RSA-4096.
    too_many_bits = body.replace(
        b"\x08\x00\x00\x00\x00\x00\x01\x00", b"\x20\x08\x00\x00\x00\x00\x01\x00"
    )
    with pytest.raises(MalformedInput, match="keyBits"):
        parse_tpm2b_public(tpm2b(too_many_bits))
    ecc_body = bytes.fromhex(AK_ECC["ak_public"])[2:]
    with pytest.raises(MalformedInput, match=r"unique\.ecc\.x"):
        parse_tpm2b_public(tpm2b(ecc_body[:-68] + tpm2b(bytes(67)) + tpm2b(bytes(32))))


def test_unsupported_key_type_is_rejected() -> None:
    keyed_hash = struct.pack(">HHI", TPM_ALG.KEYEDHASH, TPM_ALG.SHA256, 0) + tpm2b(b"")
    with pytest.raises(MalformedInput, match="KEYEDHASH"):
        parse_tpm2b_public(tpm2b(keyed_hash + struct.pack(">H", TPM_ALG.NULL) + tpm2b(b"")))
    with pytest.raises(MalformedInput, match="empty"):
        parse_tpm2b_public(b"\x00\x00")


def test_public_key_rejects_invalid_keys() -> None:
    ak = parse_tpm2b_public(bytes.fromhex(AK_RSA["ak_public"]))
    assert ak.rsa is not None
    short = replace(ak, rsa=replace(ak.rsa, modulus=ak.rsa.modulus[1:]))
    with pytest.raises(MalformedInput, match="modulus is 255 bytes"):
        short.public_key()
    ecc_ak = parse_tpm2b_public(bytes.fromhex(AK_ECC["ak_public"]))
    assert ecc_ak.ecc is not None
    off_curve = replace(ecc_ak, ecc=replace(ecc_ak.ecc, y=bytes(31) + b"\x01"))
    with pytest.raises(MalformedInput, match="invalid ECC public key"):
        off_curve.public_key()
    unknown_curve = replace(ecc_ak, ecc=replace(ecc_ak.ecc, curve=TPM_ECC.BN_P256))
    with pytest.raises(MalformedInput, match="curve"):
        unknown_curve.public_key()
    with pytest.raises(MalformedInput, match="hash algorithm"):
        replace(ak, name_alg=TPM_ALG.SM3_256).name()


def test_parse_software_key_areas() -> None:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    parsed = area(key, scheme=(TPM_ALG.ECDAA, TPM_ALG.SHA256, 5))
    assert parsed.scheme.alg == TPM_ALG.ECDAA and public_key_equals(parsed, key)
    rsaes = area(rsa.generate_private_key(3, 2048).public_key(), scheme=(TPM_ALG.RSAES,))
    assert rsaes.rsa is not None and rsaes.rsa.exponent == 3
    assert rsaes.has(TPMA_OBJECT.RESTRICTED) and not rsaes.has(TPMA_OBJECT.DECRYPT)


# --- TPMS_ATTEST -----------------------------------------------------------------------


def test_parse_swtpm_quote() -> None:
    quote = AK_RSA["quote"]
    attest = parse_attest(bytes.fromhex(quote["attest"]))
    assert attest.magic == TPM_GENERATED_VALUE and attest.type == TPM_ST.ATTEST_QUOTE
    assert attest.extra_data == bytes.fromhex(quote["nonce"])
    assert attest.certify is None and attest.quote is not None
    assert attest.quote.pcr_selection == (
        PCRSelection(TPM_ALG.SHA256, (0, 1, 2, 3, 4, 5, 6, 7, 16, 23)),
        PCRSelection(TPM_ALG.SHA1, (16,)),
    )
    assert len(attest.quote.pcr_digest) == 32
    # The qualified signer is the AK's qualified name, not its Name.
    assert attest.qualified_signer == bytes.fromhex(AK_RSA["ak_qualified_name"])
    assert attest.qualified_signer != bytes.fromhex(AK_RSA["ak_name"])
    assert attest.clock_info.safe


def test_parse_swtpm_certify() -> None:
    certify = AK_ECC["certify"]
    attest = parse_attest(bytes.fromhex(certify["attest"]))
    assert attest.type == TPM_ST.ATTEST_CERTIFY and attest.quote is None
    assert attest.certify is not None
    assert attest.certify.name == bytes.fromhex(certify["certified_name"])


def test_attest_truncations_and_trailing_bytes() -> None:
    data = bytes.fromhex(AK_RSA["quote"]["attest"])
    for cut in range(len(data)):
        with pytest.raises(MalformedInput):
            parse_attest(data[:cut])
    with pytest.raises(MalformedInput, match="trailing"):
        parse_attest(data + b"\x00")
    with pytest.raises(MalformedInput, match="limit is 1024"):
        parse_attest(bytes(1025))


def test_attest_rejects_unsupported_types_and_bad_selections() -> None:
    nonce = bytes(32)
    with pytest.raises(MalformedInput, match="unsupported type 0x801a"):
        parse_attest(marshal_attest(extra_data=nonce, attest_type=TPM_ST.ATTEST_CREATION))
    repeated = marshal_selection([(TPM_ALG.SHA256, [0]), (TPM_ALG.SHA256, [1])])
    with pytest.raises(MalformedInput, match="repeated"):
        parse_attest(marshal_attest(extra_data=nonce, selection=repeated))
    too_many = struct.pack(">I", 17) + b"\x00\x0b\x03\x01\x00\x00" * 17
    with pytest.raises(MalformedInput, match="17 banks"):
        parse_attest(marshal_attest(extra_data=nonce, selection=too_many))
    wide = struct.pack(">IHB", 1, TPM_ALG.SHA256, 9) + bytes(9)
    with pytest.raises(MalformedInput, match="sizeofSelect 9"):
        parse_attest(marshal_attest(extra_data=nonce, selection=wide))
    with pytest.raises(MalformedInput, match="extraData is 67 bytes"):
        parse_attest(marshal_attest(extra_data=bytes(67)))
    with pytest.raises(MalformedInput, match="pcrDigest is 65 bytes"):
        parse_attest(marshal_attest(extra_data=nonce, pcr_digest=bytes(65)))


# --- TPMT_SIGNATURE --------------------------------------------------------------------


def test_parse_swtpm_signatures() -> None:
    rsa_sig = parse_signature(bytes.fromhex(AK_RSA["quote"]["signature"]))
    assert (rsa_sig.sig_alg, rsa_sig.hash_alg, len(rsa_sig.value)) == (
        TPM_ALG.RSASSA,
        TPM_ALG.SHA256,
        256,
    )
    ecc_sig = parse_signature(bytes.fromhex(AK_ECC["quote"]["signature"]))
    assert (ecc_sig.sig_alg, ecc_sig.hash_alg) == (TPM_ALG.ECDSA, TPM_ALG.SHA256)
    assert ecc_sig.value[0] == 0x30  # DER Ecdsa-Sig-Value
    pss = parse_signature(bytes.fromhex(vector("swtpm_ak_rsapss.json")["quote"]["signature"]))
    assert pss.sig_alg == TPM_ALG.RSAPSS


def test_signature_malformed_inputs() -> None:
    data = bytes.fromhex(AK_ECC["quote"]["signature"])
    for cut in range(len(data)):
        with pytest.raises(MalformedInput):
            parse_signature(data[:cut])
    with pytest.raises(MalformedInput, match="trailing"):
        parse_signature(data + b"\x00")
    with pytest.raises(MalformedInput, match="NULL"):
        parse_signature(struct.pack(">H", TPM_ALG.NULL))
    with pytest.raises(MalformedInput, match="HMAC"):
        parse_signature(struct.pack(">HH", TPM_ALG.HMAC, TPM_ALG.SHA256) + bytes(32))
    zero_r = struct.pack(">HH", TPM_ALG.ECDSA, TPM_ALG.SHA256) + tpm2b(bytes(32)) + tpm2b(b"\x01")
    with pytest.raises(MalformedInput, match="zero"):
        parse_signature(zero_r)
    with pytest.raises(MalformedInput, match="empty"):
        parse_signature(struct.pack(">HH", TPM_ALG.RSASSA, TPM_ALG.SHA256) + tpm2b(b""))
    with pytest.raises(MalformedInput, match="sig is 513 bytes"):
        parse_signature(struct.pack(">HH", TPM_ALG.RSASSA, TPM_ALG.SHA256) + tpm2b(bytes(513)))


def test_short_ecdsa_components_are_accepted() -> None:
    # R and S shorter than the curve size are legal: convert via integers.
    sig = parse_signature(
        struct.pack(">HH", TPM_ALG.ECDSA, TPM_ALG.SHA256) + tpm2b(b"\x05") + tpm2b(b"\x00\x07")
    )
    assert sig.value == bytes.fromhex("3006020105020107")


# --- Reader ----------------------------------------------------------------------------


def test_reader_is_bounded() -> None:
    r = Reader(bytes.fromhex("01 0203 04050607 08090a0b0c0d0e0f 0002 aabb ff"), "test")
    assert (r.u8("a"), r.u16("b"), r.u32("c")) == (1, 0x0203, 0x04050607)
    assert r.u64("d") == 0x08090A0B0C0D0E0F
    assert r.tpm2b("e", 2) == b"\xaa\xbb"
    with pytest.raises(MalformedInput, match="test: 1 trailing bytes"):
        r.finish()
    with pytest.raises(MalformedInput, match="test: truncated at f"):
        r.u16("f")
    with pytest.raises(MalformedInput, match="g is 2 bytes, limit is 1"):
        Reader(b"\x00\x02ab", "test").tpm2b("g", 1)
