"""The agent's TPM: EK, AK, credential activation and quotes through tpm2-pytss (ESAPI).

Every transient object and session a `TPMSession` creates is flushed when it is released
or when the session closes, on every path: a TPM without a resource manager (swtpm has
three object slots) would otherwise refuse the next attestation.
"""

from __future__ import annotations

import os

# ESYS logs every expected failure (probing for absent NV indices) to stderr; keep it
# quiet unless the operator asked for logs. Must be set before libtss2 is loaded.
os.environ.setdefault("TSS2_LOG", "all+NONE")

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import tpm2_pytss as tss
import tpm2_pytss.utils as tss_utils
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spire_tpm_attestor import ekcert
from spire_tpm_attestor.tpm.constants import (
    BANK_NAMES,
    BANKS_BY_NAME,
    EK_TEMPLATES,
    EKTemplate,
    pcr_label,
)
from spire_tpm_attestor.tpm.errors import TPMStructureError
from spire_tpm_attestor.wire import devid_signed_data

log = logging.getLogger(__name__)

# tpm2-pytss objects are untyped; this alias marks where an ESYS_TR handle travels.
Handle = Any

DEFAULT_TCTIS = ("device:/dev/tpmrm0", "device:/dev/tpm0")
TCTI_NAMES = ("device", "swtpm", "mssim", "tabrmd")

_MAX_PCR_INDEX = 31  # TPML_PCR_SELECTION holds at most 4 bytes of PCR bits
_QUOTE_ATTEMPTS = 3
_MAX_NONCE = 64  # TPM2B_DATA capacity in libtss2
_AGENT_NONCE_SIZE = 32


class TPMAccessError(Exception):
    """The agent could not use its TPM: it cannot be opened, refused a command, or was
    asked for something it cannot do. The message names the step and the TPM's reason.

    Unrelated to the core's errors about malformed or unproven TPM structures.
    """

    def __init__(self, message: str, rc: int | None = None) -> None:
        super().__init__(message)
        self.rc = rc


EK_ALGORITHMS = tuple(dict.fromkeys(ek_type.algorithm for ek_type in EK_TEMPLATES))


@dataclass(frozen=True)
class EndorsementKey:
    public: bytes  # marshaled TPM2B_PUBLIC
    certificate: bytes | None  # DER
    algorithm: str
    high_range: bool


@dataclass(frozen=True)
class PCRValue:
    hash_alg: int  # TPM_ALG_ID of the bank
    index: int
    digest: bytes


class Quote(NamedTuple):
    attest: bytes  # TPMS_ATTEST, no size prefix: exactly what the AK signed
    signature: bytes  # marshaled TPMT_SIGNATURE
    pcr_values: list[PCRValue]  # in the quote's selection order


PCRSelection = Sequence[tuple[str | int, Sequence[int]]]


@contextmanager
def _tpm_step(what: str) -> Iterator[None]:
    """Turns a TSS error into a TPMAccessError that says which step failed."""
    try:
        yield
    except tss.TSS2_Exception as error:
        raise TPMAccessError(f"{what}: {error}", rc=int(error.rc)) from error


def load_certificate_file(path: str) -> bytes:
    """The DER bytes of the certificate in a PEM or DER file, unmodified."""
    try:
        content = Path(path).read_bytes()
    except OSError as error:
        raise TPMAccessError(
            f"cannot read the EK certificate file {path}: {error.strerror}"
        ) from error
    try:
        return ekcert.certificate_der(content)
    except TPMStructureError as error:
        raise TPMAccessError(f"EK certificate file {path}: {error}") from None


def _algorithm_of_certificate(der: bytes) -> str | None:
    """The EK algorithm name for a certificate's key, or None if it cannot be told."""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError:
        return None  # odd EK certificates are common; the server parses them leniently
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ecc{key.curve.key_size}"
    return None


def _algorithm_of_public(public: Any) -> str:
    """The EK algorithm name ("rsa2048", "ecc256", ...) of a TPMT_PUBLIC."""
    if public.type == tss.TPM2_ALG.RSA:
        return f"rsa{public.parameters.rsaDetail.keyBits}"
    curves = {tss.TPM2_ECC.NIST_P256: 256, tss.TPM2_ECC.NIST_P384: 384, tss.TPM2_ECC.NIST_P521: 521}
    if public.type == tss.TPM2_ALG.ECC and public.parameters.eccDetail.curveID in curves:
        return f"ecc{curves[public.parameters.eccDetail.curveID]}"
    raise TPMAccessError(f"unsupported EK key type {public.type}")


def _pcr_bank(bank: str | int) -> int:
    if isinstance(bank, int):
        return bank
    try:
        return BANKS_BY_NAME[bank.lower()]
    except KeyError:
        raise TPMAccessError(
            f"unknown PCR bank {bank!r}; known: {', '.join(BANKS_BY_NAME)}"
        ) from None


def _normalize_selection(selection: PCRSelection) -> list[tuple[int, list[int]]]:
    """Banks in first-seen order, duplicates merged, indices sorted, empty banks dropped."""
    banks: dict[int, set[int]] = {}
    for bank, indices in selection:
        for index in indices:
            if not 0 <= index <= _MAX_PCR_INDEX:
                raise TPMAccessError(f"PCR index {index} is out of range 0-{_MAX_PCR_INDEX}")
        banks.setdefault(_pcr_bank(bank), set()).update(indices)
    return [(alg, sorted(indices)) for alg, indices in banks.items() if indices]


def _tpml_pcr_selection(banks: Sequence[tuple[int, Sequence[int]]]) -> Any:
    selections = []
    for alg, indices in banks:
        mask = bytearray(3)  # PC Client TPMs have 24 PCRs: always send 3 bytes at least
        for index in indices:
            if index // 8 >= len(mask):
                mask.extend(bytes(index // 8 + 1 - len(mask)))
            mask[index // 8] |= 1 << (index % 8)
        selections.append(
            tss.TPMS_PCR_SELECTION(hash=alg, sizeofSelect=len(mask), pcrSelect=bytes(mask))
        )
    return tss.TPML_PCR_SELECTION(selections)


def _selected_pcrs(selection: Any) -> list[tuple[int, int]]:
    """(bank, index) pairs of a TPML_PCR_SELECTION, in the TPM's digest order."""
    pairs = []
    for bank in selection:
        mask = bytes(bank.pcrSelect)[: bank.sizeofSelect]
        for index in range(len(mask) * 8):
            if mask[index // 8] & (1 << (index % 8)):
                pairs.append((int(bank.hash), index))
    return pairs


def _quote_digest_matches(attest: bytes, signature: Any, values: Sequence[PCRValue]) -> bool:
    """Whether the values read afterwards are the ones the quote's pcrDigest covers."""
    hash_alg = int(signature.signature.any.hashAlg)
    if hash_alg not in BANK_NAMES:
        raise TPMAccessError(f"AK signs with unsupported hash algorithm {hash_alg:#06x}")
    quoted, _ = tss.TPMS_ATTEST.unmarshal(attest)
    digest = hashlib.new(BANK_NAMES[hash_alg], b"".join(v.digest for v in values)).digest()
    return bytes(quoted.attested.quote.pcrDigest) == digest


def _aes128_cfb(definition: Any) -> Any:
    """AES-128-CFB as a TPMT_SYM_DEF (sessions) or TPMT_SYM_DEF_OBJECT (storage keys)."""
    return definition(
        algorithm=tss.TPM2_ALG.AES,
        keyBits=tss.TPMU_SYM_KEY_BITS(aes=128),
        mode=tss.TPMU_SYM_MODE(aes=tss.TPM2_ALG.CFB),
    )


def _srk_template() -> Any:
    """The storage root key: always this template, so the TPM re-derives the same key.

    It equals tpm2-pytss's TSS2-PEM parent template, so keys saved as TSS2 PEM with the
    owner hierarchy as parent load under it.
    """
    attributes = (
        tss.TPMA_OBJECT.USERWITHAUTH
        | tss.TPMA_OBJECT.RESTRICTED
        | tss.TPMA_OBJECT.DECRYPT
        | tss.TPMA_OBJECT.NODA
        | tss.TPMA_OBJECT.FIXEDTPM
        | tss.TPMA_OBJECT.FIXEDPARENT
        | tss.TPMA_OBJECT.SENSITIVEDATAORIGIN
    )
    return tss.TPM2B_PUBLIC(
        publicArea=tss.TPMT_PUBLIC(
            type=tss.TPM2_ALG.ECC,
            nameAlg=tss.TPM2_ALG.SHA256,
            objectAttributes=attributes,
            parameters=tss.TPMU_PUBLIC_PARMS(
                eccDetail=tss.TPMS_ECC_PARMS(
                    symmetric=_aes128_cfb(tss.TPMT_SYM_DEF_OBJECT),
                    scheme=tss.TPMT_ECC_SCHEME(scheme=tss.TPM2_ALG.NULL),
                    curveID=tss.TPM2_ECC.NIST_P256,
                    kdf=tss.TPMT_KDF_SCHEME(scheme=tss.TPM2_ALG.NULL),
                )
            ),
        )
    )


def _ak_template(algorithm: str) -> Any:
    """A restricted signing key whose scheme is pinned (RSASSA or ECDSA with SHA-256)."""
    restricted = tss.TPMA_OBJECT.RESTRICTED | tss.TPMA_OBJECT.NODA
    return _signing_key_template(algorithm, restricted, "AK")


def _devid_template(algorithm: str) -> Any:
    """An LDevID key (TCG "TPM 2.0 Keys for Device Identity"): it signs what it is given."""
    return _signing_key_template(algorithm, tss.TPMA_OBJECT(0), "DevID")


def _signing_key_template(algorithm: str, extra_attributes: Any, what: str) -> Any:
    """A TPM-generated, non-duplicable signing key whose scheme is pinned to SHA-256."""
    attributes = (
        tss.TPMA_OBJECT.FIXEDTPM
        | tss.TPMA_OBJECT.FIXEDPARENT
        | tss.TPMA_OBJECT.SENSITIVEDATAORIGIN
        | tss.TPMA_OBJECT.USERWITHAUTH
        | tss.TPMA_OBJECT.SIGN_ENCRYPT
        | extra_attributes
    )
    no_symmetric = tss.TPMT_SYM_DEF_OBJECT(algorithm=tss.TPM2_ALG.NULL)
    sha256 = tss.TPMS_SCHEME_HASH(hashAlg=tss.TPM2_ALG.SHA256)
    if algorithm == "rsa":
        parameters = tss.TPMU_PUBLIC_PARMS(
            rsaDetail=tss.TPMS_RSA_PARMS(
                symmetric=no_symmetric,
                scheme=tss.TPMT_RSA_SCHEME(
                    scheme=tss.TPM2_ALG.RSASSA, details=tss.TPMU_ASYM_SCHEME(rsassa=sha256)
                ),
                keyBits=2048,
                exponent=0,
            )
        )
        key_type = tss.TPM2_ALG.RSA
    elif algorithm == "ecc":
        parameters = tss.TPMU_PUBLIC_PARMS(
            eccDetail=tss.TPMS_ECC_PARMS(
                symmetric=no_symmetric,
                scheme=tss.TPMT_ECC_SCHEME(
                    scheme=tss.TPM2_ALG.ECDSA, details=tss.TPMU_ASYM_SCHEME(ecdsa=sha256)
                ),
                curveID=tss.TPM2_ECC.NIST_P256,
                kdf=tss.TPMT_KDF_SCHEME(scheme=tss.TPM2_ALG.NULL),
            )
        )
        key_type = tss.TPM2_ALG.ECC
    else:
        raise TPMAccessError(f"unknown {what} algorithm {algorithm!r}; use 'rsa' or 'ecc'")
    return tss.TPM2B_PUBLIC(
        publicArea=tss.TPMT_PUBLIC(
            type=key_type,
            nameAlg=tss.TPM2_ALG.SHA256,
            objectAttributes=attributes,
            parameters=parameters,
        )
    )


def _device_problem(tcti: str) -> str | None:
    """Why a `device:` TCTI cannot work, in words better than libtss2's "IO failure"."""
    name, _, path = tcti.partition(":")
    if name != "device" or not path:
        return None
    if not os.path.exists(path):
        return "no such device"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"permission denied for uid {os.getuid()}"
    return None


def _open_esapi(tcti: str | None) -> tuple[Any, str]:
    """An ESAPI context on the first TCTI that answers, and that TCTI's string."""
    candidates = [tcti] if tcti else list(DEFAULT_TCTIS)
    failures = []
    for candidate in candidates:
        if candidate.partition(":")[0] not in TCTI_NAMES:
            failures.append(f"{candidate} (unsupported TCTI; use one of {', '.join(TCTI_NAMES)})")
            continue
        problem = _device_problem(candidate)
        if problem:
            failures.append(f"{candidate} ({problem})")
            continue
        try:
            esapi = tss.ESAPI(candidate)
        except (tss.TSS2_Exception, RuntimeError) as error:
            failures.append(f"{candidate} ({error})")
            continue
        try:
            # Opening a TCTI does not prove a TPM answers behind it.
            esapi.get_capability(tss.TPM2_CAP.TPM_PROPERTIES, tss.TPM2_PT.MANUFACTURER, 1)
        except tss.TSS2_Exception as error:
            esapi.close()
            failures.append(f"{candidate} ({error})")
            continue
        return esapi, candidate
    raise TPMAccessError("cannot open the TPM; tried " + "; ".join(failures))


def _transient_handles(esapi: Any) -> list[int]:
    # GetCapability(HANDLES) lists only handles of the type of its starting handle.
    handles: list[int] = []
    more, start = True, int(tss.TPM2_HC.TRANSIENT_FIRST)
    while more:
        more, data = esapi.get_capability(tss.TPM2_CAP.HANDLES, start, 64)
        handles.extend(int(handle) for handle in data.data.handles)
        if not handles:
            break
        start = handles[-1] + 1
    return handles


def flush_all_transients(tcti: str) -> int:
    """Flushes every transient object in the TPM, including other processes' (tests only).

    A process that died leaves its objects loaded on a TPM without a resource manager.
    Returns how many were flushed.
    """
    esapi, _ = _open_esapi(tcti)
    try:
        handles = _transient_handles(esapi)
        for handle in handles:
            with _tpm_step(f"flushing {handle:#010x}"):
                esapi.flush_context(esapi.tr_from_tpmpublic(handle))
        return len(handles)
    finally:
        esapi.close()


class TPMSession:
    """One conversation with the TPM, normally one attestation.

    Use it as a context manager: `close()` flushes every transient object and session it
    created. Objects of other processes are left alone.
    """

    def __init__(self, tcti: str | None = None, *, require_encryption: bool = True) -> None:
        self._esapi, self.tcti = _open_esapi(tcti)
        self._require_encryption = require_encryption
        log.debug("opened the TPM through %s", self.tcti)
        self._transients: list[Handle] = []  # flushed on release
        self._persistents: list[Handle] = []  # only the ESYS_TR is closed on release
        self._nv_reader: Callable[[int], bytes] | None = None
        self._ek: Handle | None = None
        self._ek_high_range = False
        self._ek_name_alg = 0
        self._ak: Handle | None = None
        self._devid: Handle | None = None
        self._encrypted: Handle | None = None  # the salted session, started on first use

    @classmethod
    def open(cls, tcti: str | None = None, *, require_encryption: bool = True) -> TPMSession:
        """Opens the TPM behind `tcti` (None: /dev/tpmrm0, then /dev/tpm0)."""
        return cls(tcti, require_encryption=require_encryption)

    def __enter__(self) -> TPMSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Releases everything this session created. Safe to call twice."""
        if self._esapi is None:
            return
        for handle in reversed(self._transients + self._persistents):
            self._release(handle)
        self._ek = self._ak = self._devid = self._encrypted = None
        self._esapi.close()
        self._esapi = None

    # -- handle bookkeeping -------------------------------------------------------------

    def _track(self, handle: Handle, transient: bool = True) -> Handle:
        (self._transients if transient else self._persistents).append(handle)
        return handle

    def _release(self, handle: Handle | None) -> None:
        """Flushes a transient (or forgets a persistent) handle; never raises."""
        if handle is None:
            return
        try:
            if handle in self._transients:
                self._transients.remove(handle)
                self._esapi.flush_context(handle)
            elif handle in self._persistents:
                self._persistents.remove(handle)
                self._esapi.tr_close(handle)
        except tss.TSS2_Exception as error:
            # Raising here would hide the error that led to the cleanup.
            log.warning("could not release TPM handle %#x: %s", int(handle), error)

    def _open_persistent(self, handle: int, what: str) -> Handle:
        with _tpm_step(f"opening the {what} at persistent handle {handle:#010x}"):
            return self._track(self._esapi.tr_from_tpmpublic(handle), transient=False)

    def _read_public(self, handle: Handle) -> Any:
        with _tpm_step("reading a public area"):
            public, _, _ = self._esapi.read_public(handle)
        return public

    # -- endorsement key ----------------------------------------------------------------

    def read_ek(
        self,
        algorithm: str | None = None,
        persistent_handle: int | None = None,
        cert_path: str | None = None,
    ) -> EndorsementKey:
        """Loads the EK and finds its certificate (NV first, then `cert_path`).

        Without `persistent_handle` the EK is created from the TCG default template of
        `algorithm`, or of the first type whose certificate is in NV (RSA first).
        """
        self._release(self._ek)
        self._ek = None
        if persistent_handle is not None:
            handle, public, ek_type = self._load_persistent_ek(persistent_handle, algorithm)
            certificate = (
                self._read_nv_certificate(ek_type.cert_index) if ek_type.cert_index else None
            )
        else:
            ek_type, certificate = self._choose_ek_type(algorithm, cert_path)
            handle, public = self._create_ek(ek_type)
        if certificate is None and cert_path:
            certificate = load_certificate_file(cert_path)
        self._ek = handle
        self._ek_high_range = ek_type.high_range
        self._ek_name_alg = int(public.publicArea.nameAlg)
        log.debug(
            "EK %s (%s range), certificate: %s",
            ek_type.algorithm,
            "high" if ek_type.high_range else "low",
            "present" if certificate else "none",
        )
        return EndorsementKey(
            public=bytes(public.marshal()),
            certificate=certificate,
            algorithm=ek_type.algorithm,
            high_range=ek_type.high_range,
        )

    def _choose_ek_type(
        self, algorithm: str | None, cert_path: str | None
    ) -> tuple[EKTemplate, bytes | None]:
        """The EK type to use and its NV certificate, if any."""
        if algorithm is not None and algorithm not in EK_ALGORITHMS:
            raise TPMAccessError(
                f"unknown EK algorithm {algorithm!r}; known: {', '.join(EK_ALGORITHMS)}"
            )
        candidates = [t for t in EK_TEMPLATES if algorithm in (None, t.algorithm)]
        for ek_type in candidates:
            certificate = self._read_nv_certificate(ek_type.cert_index)
            if certificate is not None:
                return ek_type, certificate
        if algorithm is None:
            # No certificate in NV: a configured certificate file tells which EK it is for.
            file_algorithm = (
                _algorithm_of_certificate(load_certificate_file(cert_path)) if cert_path else None
            )
            algorithm = file_algorithm if file_algorithm in EK_ALGORITHMS else "rsa2048"
        return next(t for t in EK_TEMPLATES if t.algorithm == algorithm), None

    def _nv_read(self, index: int) -> bytes:
        if self._nv_reader is None:
            with _tpm_step("reading the NV buffer size"):
                self._nv_reader = tss_utils.NVReadEK(self._esapi)
        return bytes(self._nv_reader(index))

    def _read_nv_certificate(self, index: int) -> bytes | None:
        """The DER certificate stored at an NV index, or None if the index is undefined."""
        try:
            with _tpm_step(f"reading the EK certificate at NV {index:#010x}"):
                data = self._nv_read(index)
        except tss_utils.NoSuchIndex:
            return None
        try:
            return ekcert.certificate_der(data)
        except TPMStructureError as error:
            raise TPMAccessError(f"NV index {index:#010x} holds no certificate: {error}") from None

    def _create_ek(self, ek_type: EKTemplate) -> tuple[Handle, Any]:
        def nv_read(index: int) -> bytes:
            # The certificate is already read (or absent); a placeholder keeps
            # create_ek_template from refusing a high-range EK without one.
            return b"" if index == ek_type.cert_index else self._nv_read(index)

        with _tpm_step(f"building the {ek_type.template} template"):
            _, template = tss_utils.create_ek_template(ek_type.template, nv_read)
        with _tpm_step(f"creating the {ek_type.algorithm} EK"):
            handle, public, *_ = self._esapi.create_primary(
                tss.TPM2B_SENSITIVE_CREATE(), template, tss.ESYS_TR.ENDORSEMENT
            )
        return self._track(handle), public

    def _load_persistent_ek(
        self, persistent_handle: int, algorithm: str | None
    ) -> tuple[Handle, Any, EKTemplate]:
        handle = self._open_persistent(persistent_handle, "EK")
        public = self._read_public(handle)
        area = public.publicArea
        key_algorithm = _algorithm_of_public(area)
        if algorithm is not None and algorithm != key_algorithm:
            raise TPMAccessError(
                f"the EK at {persistent_handle:#010x} is {key_algorithm}, not {algorithm}"
            )
        # Low-range EKs need a policy session; high-range ones accept the (empty) password.
        high_range = bool(area.objectAttributes & tss.TPMA_OBJECT.USERWITHAUTH)
        # No TCG type matches (e.g. a vendor template): no NV index to look for a certificate.
        ek_type = next(
            (t for t in EK_TEMPLATES if (t.algorithm, t.high_range) == (key_algorithm, high_range)),
            EKTemplate("", "persistent", key_algorithm, high_range, cert_index=0),
        )
        return handle, public, ek_type

    # -- parameter encryption -----------------------------------------------------------

    def _session_for(self, *, encrypt_response: bool) -> Handle:
        """The session to put first on a command that carries a secret or a proof.

        A salted HMAC session: its key comes from a salt encrypted to the EK (or, before
        the EK is loaded, to the SRK), so someone on the TPM bus can neither read the
        first parameter of the command, nor of the response when `encrypt_response` (only
        for commands whose response starts with a TPM2B), nor forge either. A TPM without
        AES-128-CFB is refused, unless the session was opened without `require_encryption`:
        then it gets a plain password session.
        """
        if self._encrypted is None:
            self._encrypted = self._start_salted_session()
        if self._encrypted == tss.ESYS_TR.PASSWORD:
            return self._encrypted
        attributes = tss.TPMA_SESSION.CONTINUESESSION | tss.TPMA_SESSION.DECRYPT
        if encrypt_response:
            attributes |= tss.TPMA_SESSION.ENCRYPT
        self._esapi.trsess_set_attributes(self._encrypted, attributes)
        return self._encrypted

    def _start_salted_session(self) -> Handle:
        if not self._supports_aes_cfb():
            # Refused by default: an interposer could fake this answer to switch encryption off.
            if self._require_encryption:
                raise TPMAccessError(
                    "the TPM does not offer AES-128-CFB for parameter encryption; set "
                    "allow_unencrypted_sessions = true to attest without it"
                )
            log.warning("the TPM lacks AES-128-CFB: TPM commands run without encryption")
            return tss.ESYS_TR.PASSWORD
        srk = self._create_srk() if self._ek is None else None
        try:
            with _tpm_step("starting the encrypted session"):
                return self._track(
                    self._esapi.start_auth_session(
                        self._ek if srk is None else srk,
                        tss.ESYS_TR.NONE,
                        tss.TPM2_SE.HMAC,
                        _aes128_cfb(tss.TPMT_SYM_DEF),
                        tss.TPM2_ALG.SHA256,
                    )
                )
        finally:
            self._release(srk)

    def _supports_aes_cfb(self) -> bool:
        return all(self._implements(alg) for alg in (tss.TPM2_ALG.AES, tss.TPM2_ALG.CFB))

    def _implements(self, alg: int) -> bool:
        # GetCapability(ALGS) lists implemented algorithms from the one asked for on.
        with _tpm_step("listing the TPM's algorithms"):
            _, data = self._esapi.get_capability(tss.TPM2_CAP.ALGS, alg, 1)
        algorithms = data.data.algorithms
        return algorithms.count > 0 and int(algorithms.algProperties[0].alg) == int(alg)

    # -- keys under the storage root key ----------------------------------------------------

    def _create_srk(self) -> Handle:
        with _tpm_step("creating the storage root key"):
            handle, *_ = self._esapi.create_primary(
                tss.TPM2B_SENSITIVE_CREATE(), _srk_template(), tss.ESYS_TR.OWNER
            )
        return self._track(handle)

    @contextmanager
    def _parent(self, persistent_handle: int | None) -> Iterator[Handle]:
        """The parent for creating or loading a key: the persistent key at
        `persistent_handle`, or the standard SRK, released afterwards (swtpm has only
        three object slots)."""
        if persistent_handle is None:
            parent = self._create_srk()
        else:
            parent = self._open_persistent(persistent_handle, "parent key")
        try:
            yield parent
        finally:
            self._release(parent)

    def create_ak(self, algorithm: str = "rsa", persistent_handle: int | None = None) -> bytes:
        """Loads a fresh AK under the SRK (or the one at `persistent_handle`).

        Returns its marshaled TPM2B_PUBLIC.
        """
        self._release(self._ak)
        self._ak = None
        if persistent_handle is not None:
            self._ak = self._open_persistent(persistent_handle, "AK")
        else:
            template = _ak_template(algorithm)
            with self._parent(None) as srk:
                with _tpm_step(f"creating the {algorithm} AK"):
                    private, public, *_ = self._esapi.create(
                        srk, tss.TPM2B_SENSITIVE_CREATE(), template
                    )
                with _tpm_step("loading the AK"):
                    self._ak = self._track(self._esapi.load(srk, private, public))
        return bytes(self._read_public(self._ak).marshal())

    # -- DevID ----------------------------------------------------------------------------

    def create_devid_key(
        self, algorithm: str = "ecc", parent_handle: int | None = None
    ) -> tuple[bytes, bytes]:
        """Creates an LDevID key under the SRK (or `parent_handle`) for provisioning.

        Returns its marshaled TPM2B_PUBLIC and TPM2B_PRIVATE (what `tpm2_create -u/-r`
        writes); the key is not left loaded.
        """
        template = _devid_template(algorithm)
        with self._parent(parent_handle) as parent, _tpm_step("creating the DevID key"):
            private, public, *_ = self._esapi.create(parent, tss.TPM2B_SENSITIVE_CREATE(), template)
        return bytes(public.marshal()), bytes(private.marshal())

    def load_devid(self, public: bytes, private: bytes, parent_handle: int | None = None) -> bytes:
        """Loads the DevID key from its blobs under the SRK (or `parent_handle`).

        Returns its marshaled TPM2B_PUBLIC as the TPM reports it.
        """
        self._release(self._devid)
        self._devid = None
        public_area = _unmarshal_exactly(tss.TPM2B_PUBLIC, public, "DevID public area")
        private_blob = _unmarshal_exactly(tss.TPM2B_PRIVATE, private, "DevID private blob")
        with self._parent(parent_handle) as parent, _tpm_step("loading the DevID key"):
            self._devid = self._track(self._esapi.load(parent, private_blob, public_area))
        return bytes(self._read_public(self._devid).marshal())

    def certify_devid(self, nonce: bytes) -> tuple[bytes, bytes]:
        """TPM2_Certify of the DevID key by the AK over `nonce`: the DevID is in this TPM.

        Returns the TPMS_ATTEST (no size prefix) and the marshaled TPMT_SIGNATURE.
        """
        if self._devid is None or self._ak is None:
            raise TPMAccessError("certify_devid needs load_devid() and create_ak() first")
        # Certify authorizes the certified object (ADMIN) first, then the signing AK.
        session = self._session_for(encrypt_response=True)
        with _tpm_step("certifying the DevID key with the AK"):
            attest, signature = self._esapi.certify(
                self._devid,
                self._ak,
                nonce,
                tss.TPMT_SIG_SCHEME(scheme=tss.TPM2_ALG.NULL),
                session1=session,
                session2=tss.ESYS_TR.PASSWORD,
            )
        return bytes(attest), bytes(signature.marshal())

    def sign_with_devid(self, server_nonce: bytes) -> tuple[bytes, bytes]:
        """Proof of possession of the DevID key, bound to `server_nonce`.

        The key signs SHA-256(server_nonce || agent_nonce) with an agent nonce drawn here,
        so no caller can make it sign a value of its own choosing. Returns the agent
        nonce and the marshaled TPMT_SIGNATURE.
        """
        if self._devid is None:
            raise TPMAccessError("sign_with_devid needs load_devid() first")
        agent_nonce = os.urandom(_AGENT_NONCE_SIZE)
        digest = hashlib.sha256(devid_signed_data(server_nonce, agent_nonce)).digest()
        # TPM2_Sign answers with a TPMT_SIGNATURE, which is not a TPM2B: no response encryption.
        session = self._session_for(encrypt_response=False)
        with _tpm_step("signing with the DevID key"):
            signature = self._esapi.sign(
                self._devid,
                digest,
                self._devid_scheme(),
                tss.TPMT_TK_HASHCHECK(tag=tss.TPM2_ST.HASHCHECK, hierarchy=tss.TPM2_RH.NULL),
                session1=session,
            )
        return agent_nonce, bytes(signature.marshal())

    def _devid_scheme(self) -> Any:
        """SHA-256 with the key's own scheme, or RSASSA/ECDSA when the key pins none."""
        area = self._read_public(self._devid).publicArea
        is_rsa = area.type == tss.TPM2_ALG.RSA
        detail = area.parameters.rsaDetail if is_rsa else area.parameters.eccDetail
        if detail.scheme.scheme != tss.TPM2_ALG.NULL:
            if detail.scheme.details.anySig.hashAlg != tss.TPM2_ALG.SHA256:
                raise TPMAccessError("the DevID key's scheme does not hash with SHA-256")
            return tss.TPMT_SIG_SCHEME(scheme=tss.TPM2_ALG.NULL)
        scheme = tss.TPMT_SIG_SCHEME(scheme=tss.TPM2_ALG.RSASSA if is_rsa else tss.TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = tss.TPM2_ALG.SHA256
        return scheme

    # -- credential activation ----------------------------------------------------------

    @contextmanager
    def _ek_authorization(self) -> Iterator[Handle]:
        """The session that authorizes use of the EK (USER role)."""
        if self._ek_high_range:
            yield tss.ESYS_TR.PASSWORD
            return
        # Low-range EKs have userWithAuth clear; their policy is PolicySecret(endorsement).
        with _tpm_step("starting the EK policy session"):
            session = self._track(
                self._esapi.start_auth_session(
                    tss.ESYS_TR.NONE,
                    tss.ESYS_TR.NONE,
                    tss.TPM2_SE.POLICY,
                    tss.TPMT_SYM_DEF(algorithm=tss.TPM2_ALG.NULL),
                    self._ek_name_alg,
                )
            )
        try:
            with _tpm_step("satisfying the EK policy"):
                self._esapi.policy_secret(tss.ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            yield session
        finally:
            self._release(session)

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """Recovers the server's secret; only works if the EK and AK share this TPM.

        Both arguments are TPM2B structures including their size prefix.
        """
        if self._ek is None or self._ak is None:
            raise TPMAccessError("activate_credential needs read_ek() and create_ak() first")
        blob = _unmarshal_exactly(tss.TPM2B_ID_OBJECT, credential_blob, "credential blob")
        secret = _unmarshal_exactly(
            tss.TPM2B_ENCRYPTED_SECRET, encrypted_secret, "encrypted secret"
        )
        # The AK (ADMIN role) takes the encrypted session: the secret comes back encrypted.
        session = self._session_for(encrypt_response=True)
        with self._ek_authorization() as ek_session, _tpm_step("activating the credential"):
            activated = self._esapi.activate_credential(
                self._ak,
                self._ek,
                blob,
                secret,
                session1=session,
                session2=ek_session,
            )
        return bytes(activated)

    # -- quote ----------------------------------------------------------------------------

    def quote(self, pcr_selection: PCRSelection, nonce: bytes) -> Quote:
        """An AK-signed quote over the selected PCRs with `nonce` as qualifying data.

        `pcr_selection` lists (bank, indices), the bank as a name ("sha256") or a
        TPM_ALG_ID. The PCR values are read after the quote; if an extend raced with it
        (the values do not hash to the quoted digest) the quote is taken again.
        """
        if self._ak is None:
            raise TPMAccessError("quote needs create_ak() first")
        if len(nonce) > _MAX_NONCE:
            raise TPMAccessError(f"nonce of {len(nonce)} bytes is longer than {_MAX_NONCE}")
        banks = _normalize_selection(pcr_selection)
        selection = _tpml_pcr_selection(banks)
        for _ in range(_QUOTE_ATTEMPTS):
            session = self._session_for(encrypt_response=True)
            with _tpm_step("quoting the PCRs"):
                attest, signature = self._esapi.quote(
                    self._ak,
                    selection,
                    nonce,
                    tss.TPMT_SIG_SCHEME(scheme=tss.TPM2_ALG.NULL),
                    session1=session,
                )
            values = self._read_pcrs(banks)
            if _quote_digest_matches(bytes(attest), signature, values):
                return Quote(bytes(attest), bytes(signature.marshal()), values)
            log.info("PCRs changed while quoting; quoting again")
        raise TPMAccessError(f"PCRs kept changing while quoting ({_QUOTE_ATTEMPTS} attempts)")

    def _read_pcrs(self, banks: Sequence[tuple[int, Sequence[int]]]) -> list[PCRValue]:
        """PCR values in selection order; TPM2_PCR_Read returns at most 8 per call."""
        wanted = [(alg, index) for alg, indices in banks for index in indices]
        found: dict[tuple[int, int], bytes] = {}
        while len(found) < len(wanted):
            pending: dict[int, list[int]] = {}
            for alg, index in wanted:
                if (alg, index) not in found:
                    pending.setdefault(alg, []).append(index)
            with _tpm_step("reading the PCRs"):
                _, returned, digests = self._esapi.pcr_read(
                    _tpml_pcr_selection(list(pending.items()))
                )
            pairs = _selected_pcrs(returned)
            if not pairs:
                missing = ", ".join(
                    pcr_label(alg, index) for alg, indices in pending.items() for index in indices
                )
                raise TPMAccessError(f"the TPM does not have PCRs {missing} (bank not allocated?)")
            for pair, digest in zip(pairs, digests, strict=True):
                found[pair] = bytes(digest)
        return [PCRValue(alg, index, found[(alg, index)]) for alg, index in wanted]


def _unmarshal_exactly(cls: Any, data: bytes, what: str) -> Any:
    try:
        value, consumed = cls.unmarshal(data)
    except (tss.TSS2_Exception, ValueError) as error:
        raise TPMAccessError(f"malformed {what}: {error}") from error
    if consumed != len(data):
        raise TPMAccessError(f"malformed {what}: {len(data) - consumed} trailing bytes")
    return value
