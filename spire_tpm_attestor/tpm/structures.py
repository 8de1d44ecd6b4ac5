"""Strict parsers for the TPM 2.0 structures the server receives from an agent.

TPM2B_PUBLIC (EK, AK, DevID key), TPMS_ATTEST (quote, certify) and TPMT_SIGNATURE.
Every field is size-bounded and trailing bytes are rejected: these bytes come from the
network before anything about them has been verified.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from spire_tpm_attestor.errors import MalformedInput
from spire_tpm_attestor.tpm.constants import (
    ECC_CURVES,
    TPM_ALG,
    TPM_ST,
    TPMA_OBJECT,
    alg_name,
    ecc_curve,
    hash_algorithm,
)

MAX_PUBLIC_SIZE = 1024  # a whole TPM2B_PUBLIC; RSA-4096 with a SHA-512 policy is ~620
MAX_ATTEST_SIZE = 1024
MAX_SIGNATURE_SIZE = 600  # RSA-4096 signature plus its headers
MAX_DIGEST_SIZE = 64  # SHA-512
MAX_NAME_SIZE = 2 + MAX_DIGEST_SIZE  # TPM2B_NAME and TPM2B_DATA hold at most a TPMT_HA
MAX_RSA_KEY_BYTES = 512  # RSA-4096
MAX_ECC_KEY_BYTES = 66  # P-521
MAX_PCR_BANKS = 16  # HASH_COUNT bound of TPML_PCR_SELECTION
MAX_PCR_SELECT_SIZE = 8  # 64 PCRs; PC-Client TPMs use 3

RSA_DEFAULT_EXPONENT = 65537  # what an exponent of 0 in TPMS_RSA_PARMS means


_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Reader:
    """Big-endian reader over a byte string that never reads past its end."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def _advance(self, n: int, field: str) -> int:
        """Where the next `n` bytes start; they are then consumed."""
        start = self._pos
        end = start + n
        if end > len(self._data):
            raise MalformedInput(f"{self._what}: truncated at {field}")
        self._pos = end
        return start

    def take(self, n: int, field: str) -> bytes:
        start = self._advance(n, field)
        return self._data[start : self._pos]

    def u8(self, field: str) -> int:
        return self._data[self._advance(1, field)]

    def u16(self, field: str) -> int:
        value: int = _U16.unpack_from(self._data, self._advance(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = _U32.unpack_from(self._data, self._advance(4, field))[0]
        return value

    def u64(self, field: str) -> int:
        value: int = _U64.unpack_from(self._data, self._advance(8, field))[0]
        return value

    def tpm2b(self, field: str, limit: int) -> bytes:
        """A TPM2B: UINT16 size then that many bytes, with size ≤ limit."""
        size = self.u16(field)
        if size > limit:
            raise MalformedInput(f"{self._what}: {field} is {size} bytes, limit is {limit}")
        return self.take(size, field)

    def finish(self) -> None:
        if self._pos != len(self._data):
            extra = len(self._data) - self._pos
            raise MalformedInput(f"{self._what}: {extra} trailing bytes")


def _check_size(data: bytes, what: str, limit: int) -> None:
    if len(data) > limit:
        raise MalformedInput(f"{what} is {len(data)} bytes, limit is {limit}")


# --- TPMT_PUBLIC -----------------------------------------------------------------------


@dataclass(frozen=True)
class SymmetricDef:
    """TPMT_SYM_DEF_OBJECT; key_bits and mode are 0/NULL when alg is NULL."""

    alg: int
    key_bits: int = 0
    mode: int = TPM_ALG.NULL


@dataclass(frozen=True)
class Scheme:
    """A TPMT_*_SCHEME or TPMT_KDF_SCHEME: algorithm and its hash (NULL when none)."""

    alg: int
    hash: int = TPM_ALG.NULL


@dataclass(frozen=True)
class RSAParameters:
    key_bits: int
    exponent: int  # as marshaled: 0 means 65537
    modulus: bytes


@dataclass(frozen=True)
class ECCParameters:
    curve: int
    kdf: Scheme
    x: bytes
    y: bytes


@dataclass(frozen=True)
class PublicArea:
    """A parsed TPMT_PUBLIC of an RSA or ECC key; `raw` is its exact marshaled form."""

    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric: SymmetricDef
    scheme: Scheme
    rsa: RSAParameters | None
    ecc: ECCParameters | None
    raw: bytes

    def has(self, attribute: TPMA_OBJECT) -> bool:
        mask = attribute.value  # plain ints: `int & IntFlag` goes through enum machinery
        return self.attributes & mask == mask

    def name(self) -> bytes:
        """The object's Name: nameAlg ‖ H_nameAlg(TPMT_PUBLIC)."""
        return self._name

    def public_key(self) -> RSAPublicKey | ec.EllipticCurvePublicKey:
        """The key as a `cryptography` object; raises MalformedInput if invalid."""
        return self._public_key

    # Computed once per parsed area (an attestation asks for each several times): both
    # depend only on the fields, and an invalid key is not cached, so it raises each time.
    @functools.cached_property
    def _name(self) -> bytes:
        digest = hashes.Hash(hash_algorithm(self.name_alg))
        digest.update(self.raw)
        return _U16.pack(self.name_alg) + digest.finalize()

    @functools.cached_property
    def _public_key(self) -> RSAPublicKey | ec.EllipticCurvePublicKey:
        if self.rsa is not None:
            return _rsa_public_key(self.rsa)
        if self.ecc is not None:
            return _ecc_public_key(self.ecc)
        raise MalformedInput(f"public area of type {alg_name(self.type)} has no key")


def _rsa_public_key(parms: RSAParameters) -> RSAPublicKey:
    if parms.key_bits % 8 or len(parms.modulus) != parms.key_bits // 8:
        raise MalformedInput(
            f"RSA modulus is {len(parms.modulus)} bytes for a {parms.key_bits}-bit key"
        )
    numbers = RSAPublicNumbers(
        parms.exponent or RSA_DEFAULT_EXPONENT, int.from_bytes(parms.modulus, "big")
    )
    try:
        return numbers.public_key()
    except ValueError as exc:
        raise MalformedInput(f"invalid RSA public key: {exc}") from None


def _ecc_public_key(parms: ECCParameters) -> ec.EllipticCurvePublicKey:
    curve = ecc_curve(parms.curve)
    size = (curve.key_size + 7) // 8
    if not (0 < len(parms.x) <= size and 0 < len(parms.y) <= size):
        raise MalformedInput(f"ECC point does not fit curve {curve.name}")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(parms.x, "big"), int.from_bytes(parms.y, "big"), curve
    )
    try:
        return numbers.public_key()
    except ValueError as exc:  # not on the curve
        raise MalformedInput(f"invalid ECC public key: {exc}") from None


def public_key_equals(area: PublicArea, key: PublicKeyTypes) -> bool:
    """Whether `key` is the same public key as the one in `area` (RSA n/e, ECC curve/x/y)."""
    if area.rsa is not None and isinstance(key, RSAPublicKey):
        numbers = key.public_numbers()
        exponent = area.rsa.exponent or RSA_DEFAULT_EXPONENT
        return numbers.n == int.from_bytes(area.rsa.modulus, "big") and numbers.e == exponent
    if area.ecc is not None and isinstance(key, ec.EllipticCurvePublicKey):
        curve = ECC_CURVES.get(area.ecc.curve)
        if curve is None or not isinstance(key.curve, curve):
            return False
        point = key.public_numbers()
        return point.x == int.from_bytes(area.ecc.x, "big") and point.y == int.from_bytes(
            area.ecc.y, "big"
        )
    return False


def _read_symmetric(r: Reader) -> SymmetricDef:
    alg = r.u16("symmetric.algorithm")
    if alg == TPM_ALG.NULL:
        return SymmetricDef(alg)
    return SymmetricDef(alg, r.u16("symmetric.keyBits"), r.u16("symmetric.mode"))


def _read_scheme(r: Reader, field: str) -> Scheme:
    alg = r.u16(f"{field}.scheme")
    # NULL and RSAES carry no details (TPMS_EMPTY); every other scheme starts with a hash.
    if alg in (TPM_ALG.NULL, TPM_ALG.RSAES):
        return Scheme(alg)
    scheme = Scheme(alg, r.u16(f"{field}.hashAlg"))
    if alg == TPM_ALG.ECDAA:
        r.u16(f"{field}.count")  # ECDAA commit counter: irrelevant to verification
    return scheme


def _parse_tpmt_public(data: bytes) -> PublicArea:
    r = Reader(data, "TPMT_PUBLIC")
    key_type = r.u16("type")
    name_alg = r.u16("nameAlg")
    attributes = r.u32("objectAttributes")
    auth_policy = r.tpm2b("authPolicy", MAX_DIGEST_SIZE)
    rsa_parms: RSAParameters | None = None
    ecc_parms: ECCParameters | None = None
    if key_type == TPM_ALG.RSA:
        symmetric = _read_symmetric(r)
        scheme = _read_scheme(r, "scheme")
        key_bits = r.u16("keyBits")
        if key_bits > MAX_RSA_KEY_BYTES * 8:
            raise MalformedInput(f"TPMT_PUBLIC: RSA keyBits {key_bits} is too large")
        exponent = r.u32("exponent")
        modulus = r.tpm2b("unique.rsa", MAX_RSA_KEY_BYTES)
        rsa_parms = RSAParameters(key_bits, exponent, modulus)
    elif key_type == TPM_ALG.ECC:
        symmetric = _read_symmetric(r)
        scheme = _read_scheme(r, "scheme")
        curve = r.u16("curveID")
        kdf = _read_scheme(r, "kdf")
        x = r.tpm2b("unique.ecc.x", MAX_ECC_KEY_BYTES)
        y = r.tpm2b("unique.ecc.y", MAX_ECC_KEY_BYTES)
        ecc_parms = ECCParameters(curve, kdf, x, y)
    else:
        raise MalformedInput(f"TPMT_PUBLIC: unsupported key type {alg_name(key_type)}")
    r.finish()
    return PublicArea(
        type=key_type,
        name_alg=name_alg,
        attributes=attributes,
        auth_policy=auth_policy,
        symmetric=symmetric,
        scheme=scheme,
        rsa=rsa_parms,
        ecc=ecc_parms,
        raw=data,
    )


def parse_tpm2b_public(data: bytes) -> PublicArea:
    """Parse a marshaled TPM2B_PUBLIC (UINT16 size ‖ TPMT_PUBLIC) of an RSA or ECC key."""
    _check_size(data, "TPM2B_PUBLIC", MAX_PUBLIC_SIZE)
    r = Reader(data, "TPM2B_PUBLIC")
    body = r.tpm2b("publicArea", MAX_PUBLIC_SIZE)
    r.finish()
    if not body:
        raise MalformedInput("TPM2B_PUBLIC: empty publicArea")
    return _parse_tpmt_public(body)


# --- TPMS_ATTEST -----------------------------------------------------------------------


@dataclass(frozen=True)
class PCRSelection:
    """One bank of a TPML_PCR_SELECTION: the bank's hash and its PCR indices, ascending."""

    hash_alg: int
    indices: tuple[int, ...]


@dataclass(frozen=True)
class ClockInfo:
    clock: int
    reset_count: int  # obfuscated for keys outside the endorsement/platform hierarchies
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class QuoteInfo:
    pcr_selection: tuple[PCRSelection, ...]
    pcr_digest: bytes


@dataclass(frozen=True)
class CertifyInfo:
    name: bytes
    qualified_name: bytes


@dataclass(frozen=True)
class Attest:
    """A parsed TPMS_ATTEST of type QUOTE or CERTIFY; `raw` is exactly what was signed."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    quote: QuoteInfo | None
    certify: CertifyInfo | None
    raw: bytes


def _read_pcr_selection(r: Reader) -> tuple[PCRSelection, ...]:
    count = r.u32("pcrSelect.count")
    if count > MAX_PCR_BANKS:
        raise MalformedInput(f"TPML_PCR_SELECTION: {count} banks, limit is {MAX_PCR_BANKS}")
    banks: list[PCRSelection] = []
    for _ in range(count):
        hash_alg = r.u16("pcrSelect.hash")
        size = r.u8("pcrSelect.sizeofSelect")
        if size > MAX_PCR_SELECT_SIZE:
            raise MalformedInput(f"TPML_PCR_SELECTION: sizeofSelect {size} is too large")
        bitmap = r.take(size, "pcrSelect.pcrSelect")
        indices = tuple(i for i in range(size * 8) if bitmap[i // 8] >> (i % 8) & 1)
        if any(bank.hash_alg == hash_alg for bank in banks):
            # A repeated bank would make "which value was quoted" ambiguous.
            raise MalformedInput(f"TPML_PCR_SELECTION: bank {alg_name(hash_alg)} repeated")
        banks.append(PCRSelection(hash_alg, indices))
    return tuple(banks)


def parse_attest(data: bytes) -> Attest:
    """Parse a TPMS_ATTEST (the bytes the TPM signs, without a TPM2B size prefix)."""
    _check_size(data, "TPMS_ATTEST", MAX_ATTEST_SIZE)
    r = Reader(data, "TPMS_ATTEST")
    magic = r.u32("magic")
    attest_type = r.u16("type")
    qualified_signer = r.tpm2b("qualifiedSigner", MAX_NAME_SIZE)
    extra_data = r.tpm2b("extraData", MAX_NAME_SIZE)
    clock_info = ClockInfo(
        clock=r.u64("clockInfo.clock"),
        reset_count=r.u32("clockInfo.resetCount"),
        restart_count=r.u32("clockInfo.restartCount"),
        safe=r.u8("clockInfo.safe") != 0,
    )
    firmware_version = r.u64("firmwareVersion")
    quote: QuoteInfo | None = None
    certify: CertifyInfo | None = None
    if attest_type == TPM_ST.ATTEST_QUOTE:
        selection = _read_pcr_selection(r)
        quote = QuoteInfo(selection, r.tpm2b("pcrDigest", MAX_DIGEST_SIZE))
    elif attest_type == TPM_ST.ATTEST_CERTIFY:
        certify = CertifyInfo(
            name=r.tpm2b("certify.name", MAX_NAME_SIZE),
            qualified_name=r.tpm2b("certify.qualifiedName", MAX_NAME_SIZE),
        )
    else:
        raise MalformedInput(f"TPMS_ATTEST: unsupported type 0x{attest_type:04x}")
    r.finish()
    return Attest(
        magic=magic,
        type=attest_type,
        qualified_signer=qualified_signer,
        extra_data=extra_data,
        clock_info=clock_info,
        firmware_version=firmware_version,
        quote=quote,
        certify=certify,
        raw=data,
    )


# --- TPMT_SIGNATURE --------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """A parsed TPMT_SIGNATURE.

    `value` is in the form `cryptography` verifies: the raw RSA signature for
    RSASSA/RSAPSS, the DER Ecdsa-Sig-Value for ECDSA.
    """

    sig_alg: int
    hash_alg: int
    value: bytes


def parse_signature(data: bytes) -> Signature:
    """Parse a marshaled TPMT_SIGNATURE of type RSASSA, RSAPSS or ECDSA."""
    _check_size(data, "TPMT_SIGNATURE", MAX_SIGNATURE_SIZE)
    r = Reader(data, "TPMT_SIGNATURE")
    sig_alg = r.u16("sigAlg")
    if sig_alg in (TPM_ALG.RSASSA, TPM_ALG.RSAPSS):
        hash_alg = r.u16("hash")
        value = r.tpm2b("sig", MAX_RSA_KEY_BYTES)
        if not value:
            raise MalformedInput("TPMT_SIGNATURE: empty RSA signature")
    elif sig_alg == TPM_ALG.ECDSA:
        hash_alg = r.u16("hash")
        # R and S may be shorter than the curve size; go through integers, never bytes.
        sig_r = int.from_bytes(r.tpm2b("signatureR", MAX_ECC_KEY_BYTES), "big")
        sig_s = int.from_bytes(r.tpm2b("signatureS", MAX_ECC_KEY_BYTES), "big")
        if not sig_r or not sig_s:
            raise MalformedInput("TPMT_SIGNATURE: zero ECDSA R or S")
        value = encode_dss_signature(sig_r, sig_s)
    else:
        raise MalformedInput(f"TPMT_SIGNATURE: unsupported sigAlg {alg_name(sig_alg)}")
    r.finish()
    return Signature(sig_alg, hash_alg, value)
