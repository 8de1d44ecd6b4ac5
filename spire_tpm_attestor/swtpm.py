"""swtpm simulators with TCG-style EK certificates, for the tests and `make demo`.

`TestCA` is a throw-away root + intermediate CA that issues EK certificates shaped like a
TPM vendor's, and DevID certificates; `SWTPM` runs one fresh simulator on free localhost ports;
`provision_ek_certificates` puts EK certificates into the simulator's NV the way a TPM
manufacturer does. tpm2-pytss is imported only inside the functions that talk to the TPM,
so the module loads on machines without libtss2 (the server side, the unit tests).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from spire_tpm_attestor.tpm.constants import EK_TEMPLATES as TCG_EK_TEMPLATES
from spire_tpm_attestor.tpm.constants import (
    OID_TCG_EK_CERTIFICATE,
    OID_TCG_MANUFACTURER,
    OID_TCG_MODEL,
    OID_TCG_VERSION,
    RC_NO_SUCH_HANDLE,
)

# "id:" + the TPM_PT_MANUFACTURER value in hex: "SWTP".
DEFAULT_MANUFACTURER = "id:53575450"
DEFAULT_MODEL = "swtpm"
DEFAULT_VERSION = "id:20191023"

# Algorithm names the agent uses, mapped to the TCG template provisioned for them.
DEFAULT_EK_TYPES = {"rsa2048": "L-1", "ecc256": "L-2", "ecc384": "H-3"}

# TCG template name -> (tpm2-pytss lookup name, certificate NV index) of the templates
# that can be provisioned here.
_PROVISIONED_TEMPLATES = ("L-1", "L-2", "H-1", "H-2", "H-3", "H-6")
EK_TEMPLATES: dict[str, tuple[str, int]] = {
    t.tcg_name: (t.template, t.cert_index)
    for t in TCG_EK_TEMPLATES
    if t.tcg_name in _PROVISIONED_TEMPLATES
}

# NV writes are split to stay under TPM2_PT_NV_BUFFER_MAX (1024 on swtpm).
_NV_WRITE_CHUNK = 512

CAPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
EKPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_CA_VALIDITY = datetime.timedelta(days=3650)
# TCG: a device certificate with no well-defined expiry uses 99991231235959Z.
_EK_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


class SWTPMError(RuntimeError):
    """The simulator could not be started, provisioned or stopped."""


def _new_key(key_type: Literal["ec", "rsa"]) -> CAPrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _ca_certificate(
    subject: x509.Name,
    key: CAPrivateKey,
    issuer: x509.Name,
    issuer_key: CAPrivateKey,
    path_length: int | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def _matching_foreign_key(public_key: EKPublicKey) -> EKPublicKey:
    """A fresh public key of the same kind and size, belonging to no TPM."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return rsa.generate_private_key(65537, public_key.key_size).public_key()
    return ec.generate_private_key(public_key.curve).public_key()


@dataclass(frozen=True)
class TestCA:
    """A root CA and an intermediate CA that signs TCG-style EK certificates.

    The certificates are written as PEM to `directory`: `root.pem` (the trust anchor),
    `intermediate.pem` (the EK certificates' direct issuer) and `bundle.pem` (both).
    """

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    root_certificate: x509.Certificate
    intermediate_certificate: x509.Certificate
    intermediate_key: CAPrivateKey

    @classmethod
    def create(
        cls, directory: Path, name: str = "Test TPM", key_type: Literal["ec", "rsa"] = "ec"
    ) -> TestCA:
        """Makes both CAs (keys of `key_type`) and writes their certificates to `directory`."""
        root_key = _new_key(key_type)
        intermediate_key = _new_key(key_type)
        organization = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "spire-tpm-attestor tests")
        root_name = x509.Name(
            [organization, x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Root CA")]
        )
        intermediate_name = x509.Name(
            [organization, x509.NameAttribute(NameOID.COMMON_NAME, f"{name} EK Intermediate CA")]
        )
        root = _ca_certificate(root_name, root_key, root_name, root_key, path_length=None)
        intermediate = _ca_certificate(
            intermediate_name, intermediate_key, root_name, root_key, path_length=0
        )
        ca = cls(Path(directory), root, intermediate, intermediate_key)
        ca.directory.mkdir(parents=True, exist_ok=True)
        root_pem = root.public_bytes(serialization.Encoding.PEM)
        intermediate_pem = intermediate.public_bytes(serialization.Encoding.PEM)
        ca.root_path.write_bytes(root_pem)
        ca.intermediate_path.write_bytes(intermediate_pem)
        ca.bundle_path.write_bytes(intermediate_pem + root_pem)
        return ca

    @property
    def root_path(self) -> Path:
        return self.directory / "root.pem"

    @property
    def intermediate_path(self) -> Path:
        return self.directory / "intermediate.pem"

    @property
    def bundle_path(self) -> Path:
        return self.directory / "bundle.pem"

    def issue_ek_certificate(
        self,
        public_key: EKPublicKey,
        *,
        manufacturer: str = DEFAULT_MANUFACTURER,
        model: str = DEFAULT_MODEL,
        version: str = DEFAULT_VERSION,
        subject_cn: str | None = None,
    ) -> x509.Certificate:
        """An EK certificate as the TCG EK Credential Profile shapes it.

        The subject is empty (or the placeholder `subject_cn`), so the TPM's identity lives
        in a critical SAN directoryName; the extensions are the ones vendors set.
        """
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)] if subject_cn else []
        )
        tpm_identity = x509.Name(
            [
                x509.RelativeDistinguishedName([x509.NameAttribute(oid, value)])
                for oid, value in (
                    (OID_TCG_MANUFACTURER, manufacturer),
                    (OID_TCG_MODEL, model),
                    (OID_TCG_VERSION, version),
                )
            ]
        )
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.intermediate_certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(_EK_NOT_AFTER)
            .add_extension(
                x509.SubjectAlternativeName([x509.DirectoryName(tpm_identity)]), critical=True
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                # The profile asks for keyEncipherment on RSA EKs, keyAgreement on ECC EKs.
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=is_rsa,
                    data_encipherment=False,
                    key_agreement=not is_rsa,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([OID_TCG_EK_CERTIFICATE]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.intermediate_key.public_key()
                ),
                critical=False,
            )
            .sign(self.intermediate_key, hashes.SHA256())
        )

    def issue_devid_certificate(
        self, public_key: EKPublicKey, subject_cn: str, *, serial_number: int | None = None
    ) -> x509.Certificate:
        """An LDevID certificate for a key in a TPM, as an enterprise CA issues one."""
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(self.intermediate_certificate.subject)
            .public_key(public_key)
            .serial_number(serial_number or x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.intermediate_key.public_key()
                ),
                critical=False,
            )
            .sign(self.intermediate_key, hashes.SHA256())
        )

    def chain_pem(self, leaf: x509.Certificate) -> bytes:
        """`leaf` then the intermediate, as PEM: what an agent's devid_cert_path holds."""
        return b"".join(
            certificate.public_bytes(serialization.Encoding.PEM)
            for certificate in (leaf, self.intermediate_certificate)
        )


def _free_port_pair() -> int:
    """A localhost port P with P+1 also free: the swtpm TCTI expects control at P+1."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise SWTPMError("no pair of consecutive free TCP ports on 127.0.0.1")


class SWTPM:
    """One swtpm TPM 2.0 simulator on 127.0.0.1, as a context manager.

    With no `state_dir` it starts from an empty temporary state (a freshly manufactured
    TPM) that is removed on stop; a given `state_dir` is kept. The simulator's own output
    goes to `log_path`, never to our stdout.
    """

    _STARTUP_ATTEMPTS = 3

    def __init__(self, state_dir: Path | None = None, startup_timeout: float = 10.0) -> None:
        self._owns_state = state_dir is None
        self.state_dir = Path(tempfile.mkdtemp(prefix="swtpm-")) if state_dir is None else state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.state_dir / "swtpm.log"
        self.port = 0
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def ctrl_port(self) -> int:
        return self.port + 1

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def __enter__(self) -> SWTPM:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if shutil.which("swtpm") is None:
            raise SWTPMError("swtpm is not installed (Debian: apt-get install swtpm swtpm-tools)")
        # Another process can take the ports between our probe and swtpm's bind: retry.
        for _ in range(self._STARTUP_ATTEMPTS):
            self.port = _free_port_pair()
            if self._launch():
                return
        raise SWTPMError(f"swtpm did not start; its log:\n{self._log_tail()}")

    def _launch(self) -> bool:
        command = [
            "swtpm", "socket", "--tpm2",
            "--tpmstate", f"dir={self.state_dir}",
            "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={self.ctrl_port},bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        self._kill()
        return False

    def stop(self) -> None:
        """Shuts the simulator down (gracefully if it answers) and removes owned state."""
        try:
            if self._process is not None and self._process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run(
                        ["swtpm_ioctl", "--tcp", f"127.0.0.1:{self.ctrl_port}", "-s"],
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        timeout=5,
                        check=False,
                    )
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._kill()
            self._process = None
        finally:
            if self._owns_state:
                shutil.rmtree(self.state_dir, ignore_errors=True)

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def _esapi(tcti: str) -> Iterator[Any]:
    # Probing absent NV indices is expected; keep ESYS from logging each one.
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    from tpm2_pytss import ESAPI

    esapi = ESAPI(tcti)
    try:
        yield esapi
    finally:
        esapi.close()


def _ek_public_key(esapi: Any, template_name: str, cert_index: int) -> EKPublicKey:
    """Creates the EK from its default template and returns its public key (EK flushed)."""
    from tpm2_pytss import ESYS_TR, TPM2B_SENSITIVE_CREATE
    from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

    nv_read = NVReadEK(esapi)

    def read_without_certificate(index: int) -> bytes:
        # create_ek_template refuses a high-range type without a certificate; we are
        # about to write that certificate, so report a placeholder instead.
        try:
            return bytes(nv_read(index))
        except NoSuchIndex:
            if index == cert_index:
                return b""
            raise

    _, template = create_ek_template(template_name, read_without_certificate)
    handle, public, *_ = esapi.create_primary(
        TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
    )
    esapi.flush_context(handle)
    key = serialization.load_der_public_key(public.to_der())
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise SWTPMError(f"unexpected EK key type {type(key).__name__}")
    return key


def _write_nv(esapi: Any, index: int, data: bytes) -> None:
    """(Re)defines a platform-created, world-readable NV index holding `data`."""
    from tpm2_pytss import (
        ESYS_TR,
        TPM2_ALG,
        TPM2B_NV_PUBLIC,
        TPMA_NV,
        TPMS_NV_PUBLIC,
        TSS2_Exception,
    )

    try:
        existing = esapi.tr_from_tpmpublic(index)
    except TSS2_Exception as error:
        if error.rc != RC_NO_SUCH_HANDLE:
            raise
    else:
        esapi.nv_undefine_space(existing, auth_handle=ESYS_TR.RH_PLATFORM)
    # The attributes TPM manufacturers give EK certificate indices (tpm-crypto.md §6.4).
    attributes = (
        TPMA_NV.PPWRITE
        | TPMA_NV.WRITEDEFINE
        | TPMA_NV.PPREAD
        | TPMA_NV.OWNERREAD
        | TPMA_NV.AUTHREAD
        | TPMA_NV.NO_DA
        | TPMA_NV.PLATFORMCREATE
    )
    nv_public = TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=attributes, dataSize=len(data)
        )
    )
    handle = esapi.nv_define_space(None, nv_public, auth_handle=ESYS_TR.RH_PLATFORM)
    try:
        for offset in range(0, len(data), _NV_WRITE_CHUNK):
            esapi.nv_write(
                handle,
                data[offset : offset + _NV_WRITE_CHUNK],
                offset,
                auth_handle=ESYS_TR.RH_PLATFORM,
            )
    finally:
        esapi.tr_close(handle)


def write_ek_certificate_nv(tcti: str, index: int, data: bytes) -> None:
    """Writes raw bytes (a certificate, possibly with a header or padding) to an NV index."""
    with _esapi(tcti) as esapi:
        _write_nv(esapi, index, data)


def provision_ek_certificates(
    tcti: str,
    ca: TestCA,
    algorithms: Sequence[str] = ("rsa2048", "ecc256", "ecc384"),
    *,
    foreign_key: bool = False,
) -> dict[str, x509.Certificate]:
    """Gives the TPM EK certificates issued by `ca`, as a manufacturer does.

    Each entry of `algorithms` is an agent algorithm name ("rsa2048" -> L-1, "ecc256" ->
    L-2, "ecc384" -> H-3) or a TCG template name from `EK_TEMPLATES` ("H-1", ...). The EK
    is created from its default template, its certificate is issued by `ca` and written to
    the template's NV index with platform authorization. With `foreign_key` the
    certificates certify an unrelated key instead of the TPM's EK (for negative tests).
    Returns the certificates written, by the names given.
    """
    written: dict[str, x509.Certificate] = {}
    with _esapi(tcti) as esapi:
        for name in algorithms:
            ek_type = DEFAULT_EK_TYPES.get(name, name)
            if ek_type not in EK_TEMPLATES:
                raise ValueError(f"unknown EK algorithm or template {name!r}")
            template_name, cert_index = EK_TEMPLATES[ek_type]
            public_key = _ek_public_key(esapi, template_name, cert_index)
            if foreign_key:
                public_key = _matching_foreign_key(public_key)
            certificate = ca.issue_ek_certificate(public_key)
            _write_nv(esapi, cert_index, certificate.public_bytes(serialization.Encoding.DER))
            written[name] = certificate
    return written
