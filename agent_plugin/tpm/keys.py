"""The keys: the EK, the AK, the DevID key, and what they prove together.

The EK comes from a TCG default template (or a persistent handle), the AK and the
DevID key live under the SRK (or a persistent parent). With them the session activates
the server's credential (EK and AK share this TPM), certifies the DevID key with the AK
and signs with the DevID key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import tpm2_pytss as tss
import tpm2_pytss.utils as tss_utils

from agent_plugin.tpm.nv import NVReader, choose_ek_template, load_certificate_file
from agent_plugin.tpm.session import (
    DEFAULT_TPM_TIMEOUT,
    Handle,
    SessionBase,
    TPMAccessError,
    log,
    tpm_step,
    unmarshal_exactly,
)
from spire_tpm_attestor.tpm.constants import EK_TEMPLATES, EKTemplate
from spire_tpm_attestor.tpm.structures import parse_tpm2b_public
from spire_tpm_attestor.wire import devid_signed_data
from spire_tpm_attestor.x509.certificate import load_certificate
from spire_tpm_attestor.x509.ek import check_certificate_matches_public_area

_AGENT_NONCE_SIZE = 32
# Where the TCG provisioning guidance persists the EK (TCG handle registry).
PERSISTED_EK_HANDLE = 0x81010001


@dataclass(frozen=True)
class EndorsementKey:
    public: bytes  # marshaled TPM2B_PUBLIC
    certificate: bytes | None  # DER
    algorithm: str
    high_range: bool
    intermediates: tuple[bytes, ...] = ()  # DER, from the TCG EK chain NV indices
    provisioned: tuple[str, ...] = ()  # "template", "nonce": what NV changed in the template


class KeyOperations(SessionBase):
    """Loading the EK, the AK and the DevID key, and the proofs they make."""

    def __init__(
        self,
        tcti: str | None = None,
        *,
        require_encryption: bool = True,
        timeout: float = DEFAULT_TPM_TIMEOUT,
    ) -> None:
        super().__init__(tcti, require_encryption=require_encryption, timeout=timeout)
        self._nv = NVReader(self._esapi)
        self._ek_high_range = False
        self._ek_name_alg = 0

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
        provisioned: tuple[str, ...] = ()
        if persistent_handle is not None:
            handle, public, ek_type = self._load_persistent_ek(persistent_handle, algorithm)
            certificate = self._nv.certificate(ek_type.cert_index) if ek_type.cert_index else None
        else:
            ek_type, certificate = choose_ek_template(self._nv, algorithm, cert_path)
            handle, public, provisioned = self._create_ek(ek_type, certificate)
        if certificate is None and cert_path:
            certificate = load_certificate_file(cert_path)
        self._ek = handle
        self._ek_high_range = ek_type.high_range
        self._ek_name_alg = int(public.publicArea.nameAlg)
        intermediates = tuple(self._nv.chain_certificates())
        log.debug(
            "EK %s (%s range, %s), certificate: %s, chain certificates from NV: %d",
            ek_type.algorithm,
            "high" if ek_type.high_range else "low",
            " and ".join(f"{what} from NV" for what in provisioned) or "default template",
            "present" if certificate else "none",
            len(intermediates),
        )
        return EndorsementKey(
            public=bytes(public.marshal()),
            certificate=certificate,
            algorithm=ek_type.algorithm,
            high_range=ek_type.high_range,
            intermediates=intermediates,
            provisioned=provisioned,
        )

    def _create_ek(
        self, ek_type: EKTemplate, certificate: bytes | None
    ) -> tuple[Handle, Any, tuple[str, ...]]:
        """The EK from its default template, or from the template and nonce the
        manufacturer provisioned in NV (which its certificate then certifies)."""
        provisioned: list[str] = []

        def nv_read(index: int) -> bytes:
            # The certificate is already read (or absent); a placeholder keeps
            # create_ek_template from refusing a high-range EK without one.
            if index == ek_type.cert_index:
                return b""
            data = self._nv.read(index)
            provisioned.append("template" if index == ek_type.template_index else "nonce")
            return data

        with tpm_step(f"building the {ek_type.template} template"):
            _, template = tss_utils.create_ek_template(ek_type.template, nv_read)
        # A nonce from NV goes into the template's key field, which the comparison below
        # cannot see: reuse such an EK only when its certificate certifies it.
        if certificate is not None or not provisioned:
            persisted = self._persisted_ek(template, certificate)
            if persisted is not None:
                return (*persisted, tuple(provisioned))
        with tpm_step(f"creating the {ek_type.algorithm} EK"):
            handle, public, *_ = self._esapi.create_primary(
                tss.TPM2B_SENSITIVE_CREATE(), template, tss.ESYS_TR.ENDORSEMENT
            )
        return self._track(handle), public, tuple(provisioned)

    def _persisted_ek(self, template: Any, certificate: bytes | None) -> tuple[Handle, Any] | None:
        """The EK persisted at the TCG handle 0x81010001, if it is the key `template` gives.

        Deriving an RSA EK again costs the TPM a key generation (most of an agent's
        start on swtpm). The persisted key is used only when its public area is exactly
        the template's but for the key itself (what CreatePrimary would return), and,
        when there is a certificate, it certifies that very key; otherwise the EK is
        created as always. The server checks the certificate's binding regardless.
        """
        try:
            handle = self._esapi.tr_from_tpmpublic(PERSISTED_EK_HANDLE)
        except tss.TSS2_Exception:
            return None  # nothing persisted there
        self._track(handle, transient=False)
        public = self._read_public(handle)
        expected, _ = tss.TPMT_PUBLIC.unmarshal(bytes(template.publicArea.marshal()))
        expected.unique = public.publicArea.unique
        matches = bytes(expected.marshal()) == bytes(public.publicArea.marshal())
        if matches and certificate is not None:
            try:
                area = parse_tpm2b_public(bytes(public.marshal()))
                check_certificate_matches_public_area(load_certificate(certificate), area)
            except Exception:  # an unreadable certificate or key: do as without one here
                matches = False
        if not matches:
            log.debug("the key at %#010x is not this EK; creating it", PERSISTED_EK_HANDLE)
            self._release(handle)
            return None
        log.debug("using the EK persisted at %#010x", PERSISTED_EK_HANDLE)
        return handle, public

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
            EKTemplate(
                tcg_name="",
                template="persistent",
                algorithm=key_algorithm,
                high_range=high_range,
                cert_index=0,
            ),
        )
        return handle, public, ek_type

    # -- attestation key ------------------------------------------------------------------

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
                with tpm_step(f"creating the {algorithm} AK"):
                    private, public, *_ = self._esapi.create(
                        srk, tss.TPM2B_SENSITIVE_CREATE(), template
                    )
                with tpm_step("loading the AK"):
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
        with self._parent(parent_handle) as parent, tpm_step("creating the DevID key"):
            private, public, *_ = self._esapi.create(parent, tss.TPM2B_SENSITIVE_CREATE(), template)
        return bytes(public.marshal()), bytes(private.marshal())

    def load_devid(self, public: bytes, private: bytes, parent_handle: int | None = None) -> bytes:
        """Loads the DevID key from its blobs under the SRK (or `parent_handle`).

        Returns its marshaled TPM2B_PUBLIC as the TPM reports it.
        """
        self._release(self._devid)
        self._devid = None
        public_area = unmarshal_exactly(tss.TPM2B_PUBLIC, public, "DevID public area")
        private_blob = unmarshal_exactly(tss.TPM2B_PRIVATE, private, "DevID private blob")
        with self._parent(parent_handle) as parent, tpm_step("loading the DevID key"):
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
        with tpm_step("certifying the DevID key with the AK"):
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
        with tpm_step("signing with the DevID key"):
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
        with tpm_step("starting the EK policy session"):
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
            with tpm_step("satisfying the EK policy"):
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
        blob = unmarshal_exactly(tss.TPM2B_ID_OBJECT, credential_blob, "credential blob")
        secret = unmarshal_exactly(tss.TPM2B_ENCRYPTED_SECRET, encrypted_secret, "encrypted secret")
        # The AK (ADMIN role) takes the encrypted session: the secret comes back encrypted.
        session = self._session_for(encrypt_response=True)
        with self._ek_authorization() as ek_session, tpm_step("activating the credential"):
            activated = self._esapi.activate_credential(
                self._ak,
                self._ek,
                blob,
                secret,
                session1=session,
                session2=ek_session,
            )
        return bytes(activated)


def _algorithm_of_public(public: Any) -> str:
    """The EK algorithm name ("rsa2048", "ecc256", ...) of a TPMT_PUBLIC."""
    if public.type == tss.TPM2_ALG.RSA:
        return f"rsa{public.parameters.rsaDetail.keyBits}"
    curves = {tss.TPM2_ECC.NIST_P256: 256, tss.TPM2_ECC.NIST_P384: 384, tss.TPM2_ECC.NIST_P521: 521}
    if public.type == tss.TPM2_ALG.ECC and public.parameters.eccDetail.curveID in curves:
        return f"ecc{curves[public.parameters.eccDetail.curveID]}"
    raise TPMAccessError(f"unsupported EK key type {public.type}")


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
