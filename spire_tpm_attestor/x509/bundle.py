"""CA certificates: every certificate of a PEM bundle or DER file, and which of them can
be trust anchors.

`certificates_in` is strict: one bad certificate fails the file (for chains that must be
whole, like an agent's DevID chain). `ca_certificates_in` judges each certificate alone,
as a trust store must: public bundles of TPM manufacturer CAs hold the odd certificate
that cannot be used, and it must not take the others with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from spire_tpm_attestor.errors import MalformedInput, SourceUnavailable
from spire_tpm_attestor.files import FileTooLarge, read_bounded
from spire_tpm_attestor.x509.certificate import (
    Certificate,
    decode_pem_block,
    from_der,
    is_pem,
    load_certificate,
    pem_blocks,
    pem_certificates,
)
from spire_tpm_attestor.x509.chain import signing_problem

MAX_BUNDLE_FILE_SIZE = 4 * 1024 * 1024


def certificates_in(data: bytes) -> list[Certificate]:
    """Every certificate of PEM `data`, or the one certificate of DER `data`."""
    if is_pem(data):
        return [from_der(der) for der in pem_certificates(data)]
    return [load_certificate(data)]


def anchor_problem(cert: Certificate) -> str | None:
    """Why `cert` cannot be a trust anchor (not a CA, may not sign certificates, an
    unknown critical extension, a key that cannot be read), or None."""
    problem = signing_problem(cert)
    if problem is not None:
        return problem
    try:
        cert.public_key()
    except MalformedInput as exc:
        return f"{cert.describe()}: {exc}"
    return None


def _read_each(data: bytes) -> list[Certificate | MalformedInput]:
    """Each certificate of a PEM bundle or DER file, or why it cannot be read."""

    def read(load: Callable[[bytes], Certificate], part: bytes) -> Certificate | MalformedInput:
        try:
            return load(part)
        except MalformedInput as exc:
            return exc

    if not is_pem(data):
        return [read(load_certificate, data)]
    return [read(lambda text: from_der(decode_pem_block(text)), text) for text in pem_blocks(data)]


def ca_certificates_in(data: bytes) -> tuple[list[Certificate], list[str]]:
    """The certificates of a CA file (PEM bundle or DER) that can be trust anchors, and
    why each of the others cannot ("certificate 3 of 7: ... is not a CA")."""
    results = _read_each(data)
    if not results:
        return [], ["no CERTIFICATE block"]
    usable: list[Certificate] = []
    unusable: list[str] = []
    for number, result in enumerate(results, 1):
        where = f"certificate {number} of {len(results)}: " if len(results) > 1 else ""
        problem = str(result) if isinstance(result, MalformedInput) else anchor_problem(result)
        if problem is not None:
            unusable.append(f"{where}{problem}")
        elif isinstance(result, Certificate):
            usable.append(result)
    return usable, unusable


def load_ca_bundle(path: str | os.PathLike[str]) -> list[Certificate]:
    """Every certificate in a PEM or DER file (`certificates_in`); errors name the file."""
    try:
        data = read_bounded(path, MAX_BUNDLE_FILE_SIZE)
    except OSError as exc:
        raise SourceUnavailable(f"CA bundle {os.fspath(path)}: {exc}") from None
    except FileTooLarge as exc:
        raise FileTooLarge(f"CA bundle {exc}") from None
    try:
        return certificates_in(data)
    except MalformedInput as exc:
        raise MalformedInput(f"CA bundle {os.fspath(path)}: {exc}") from None
