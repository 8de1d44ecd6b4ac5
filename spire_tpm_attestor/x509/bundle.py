"""CA bundles: every certificate in a PEM/DER file or in the files of a directory."""

from __future__ import annotations

import os

from spire_tpm_attestor.errors import MalformedInput, SourceUnavailable
from spire_tpm_attestor.files import FileTooLarge, read_bounded
from spire_tpm_attestor.x509.certificate import (
    Certificate,
    from_der,
    load_certificate,
    pem_certificates,
)

MAX_BUNDLE_FILE_SIZE = 4 * 1024 * 1024


def load_ca_bundle(path: str | os.PathLike[str]) -> list[Certificate]:
    """All certificates in a PEM/DER file, or in the regular files of a directory.

    Hidden entries and subdirectories are skipped (Kubernetes volume mounts keep their
    `..data` machinery there). A file that is not a certificate is an error naming it.
    """
    if os.path.isdir(path):
        files = sorted(
            entry.path
            for entry in os.scandir(path)
            if not entry.name.startswith(".") and entry.is_file()
        )
    else:
        files = [os.fspath(path)]
    certificates: list[Certificate] = []
    for file in files:
        try:
            data = read_bounded(file, MAX_BUNDLE_FILE_SIZE)
        except OSError as exc:
            raise SourceUnavailable(f"CA bundle {file}: {exc}") from None
        except FileTooLarge as exc:
            raise FileTooLarge(f"CA bundle {exc}") from None
        try:
            if b"-----BEGIN" in data:
                certificates.extend(from_der(der) for der in pem_certificates(data))
            else:
                certificates.append(load_certificate(data))
        except MalformedInput as exc:
            raise MalformedInput(f"CA bundle {file}: {exc}") from None
    return certificates
