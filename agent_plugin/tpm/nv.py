"""NV reads: the EK certificate (the TCG NV index first, then a configured file), the
provisioned EK template and nonce, and the manufacturer's chain certificates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tpm2_pytss as tss
import tpm2_pytss.utils as tss_utils
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agent_plugin.tpm.session import TPMAccessError, log, tpm_step
from spire_tpm_attestor import wire
from spire_tpm_attestor.errors import MalformedInput
from spire_tpm_attestor.files import FileTooLarge, read_bounded
from spire_tpm_attestor.tpm.constants import (
    EK_CHAIN_FIRST_INDEX,
    EK_CHAIN_LAST_INDEX,
    EK_TEMPLATES,
    EKTemplate,
)
from spire_tpm_attestor.x509 import certificate_der
from spire_tpm_attestor.x509.certificate import from_der
from spire_tpm_attestor.x509.issuers import nv_chain_certificates

EK_ALGORITHMS = tuple(dict.fromkeys(ek_type.algorithm for ek_type in EK_TEMPLATES))
# An EK certificate is a few KiB (NV indices hold at most a few); anything much larger
# is the wrong file.
MAX_CERTIFICATE_FILE = 64 * 1024


class NVReader:
    """Reads NV indices through one ESAPI context; the NV buffer size is asked once."""

    def __init__(self, esapi: Any) -> None:
        self._esapi = esapi
        self._reader: Callable[[int], bytes] | None = None

    def read(self, index: int) -> bytes:
        if self._reader is None:
            with tpm_step("reading the NV buffer size"):
                self._reader = tss_utils.NVReadEK(self._esapi)
        return bytes(self._reader(index))

    def certificate(self, index: int) -> bytes | None:
        """The DER certificate stored at an NV index, or None if the index is undefined."""
        try:
            with tpm_step(f"reading the EK certificate at NV {index:#010x}"):
                data = self.read(index)
        except tss_utils.NoSuchIndex:
            return None
        try:
            return certificate_der(data)
        except MalformedInput as error:
            raise TPMAccessError(f"NV index {index:#010x} holds no certificate: {error}") from None

    def defined_indices(self, first: int, last: int) -> list[int]:
        """The NV indices defined in first..last, in ascending order."""
        found: list[int] = []
        more = True
        with tpm_step(f"listing NV indices {first:#010x}-{last:#010x}"):
            while more and first <= last:
                more, data = self._esapi.get_capability(tss.TPM2_CAP.HANDLES, first, 64)
                handles = [int(handle) for handle in data.data.handles]
                found.extend(handle for handle in handles if handle <= last)
                if not handles:
                    break
                first = handles[-1] + 1
        return found

    def chain_certificates(self) -> list[bytes]:
        """The certificates the manufacturer provisioned to chain the EK certificate to its
        root (TCG chain indices), as many as a payload may carry. Unreadable ones are
        skipped with a warning: the server decides whether the chain verifies."""
        found: list[bytes] = []
        for index in self.defined_indices(EK_CHAIN_FIRST_INDEX, EK_CHAIN_LAST_INDEX):
            try:
                with tpm_step(f"reading the EK chain certificates at NV {index:#010x}"):
                    ders = nv_chain_certificates(self.read(index))
                for der in ders:
                    if len(der) > wire.MAX_CERTIFICATE:
                        raise MalformedInput(f"a certificate of {len(der)} bytes, over the limit")
                    from_der(der)  # only what the server can parse: it refuses the payload else
            except tss_utils.NoSuchIndex:
                continue  # undefined since it was listed
            except (MalformedInput, TPMAccessError) as error:
                log.warning(
                    "skipping an EK chain NV index",
                    extra={"nv_index": f"{index:#010x}", "reason": str(error)},
                )
                continue
            found.extend(ders)
        if len(found) > wire.MAX_CHAIN_CERTIFICATES:
            log.warning(
                "sending only the first EK chain certificates",
                extra={"found": len(found), "sent": wire.MAX_CHAIN_CERTIFICATES},
            )
        return found[: wire.MAX_CHAIN_CERTIFICATES]


def choose_ek_template(
    nv: NVReader, algorithm: str | None, cert_path: str | None
) -> tuple[EKTemplate, bytes | None]:
    """The EK template to use and its NV certificate, if any.

    `algorithm` None: the first template whose certificate is in NV, else the one a
    configured certificate file is for, else RSA 2048.
    """
    if algorithm is not None and algorithm not in EK_ALGORITHMS:
        raise TPMAccessError(
            f"unknown EK algorithm {algorithm!r}; known: {', '.join(EK_ALGORITHMS)}"
        )
    candidates = [t for t in EK_TEMPLATES if algorithm in (None, t.algorithm)]
    for ek_type in candidates:
        certificate = nv.certificate(ek_type.cert_index)
        if certificate is not None:
            return ek_type, certificate
    if algorithm is None:
        # No certificate in NV: a configured certificate file tells which EK it is for.
        file_algorithm = (
            _algorithm_of_certificate(load_certificate_file(cert_path)) if cert_path else None
        )
        algorithm = file_algorithm if file_algorithm in EK_ALGORITHMS else "rsa2048"
    return next(t for t in EK_TEMPLATES if t.algorithm == algorithm), None


def load_certificate_file(path: str) -> bytes:
    """The DER bytes of the certificate in a PEM or DER file, unmodified."""
    try:
        content = read_bounded(path, MAX_CERTIFICATE_FILE)
    except OSError as error:
        raise TPMAccessError(
            f"cannot read the EK certificate file {path}: {error.strerror}"
        ) from error
    except FileTooLarge as error:
        raise TPMAccessError(f"EK certificate file {error}") from None
    try:
        return certificate_der(content)
    except MalformedInput as error:
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
