"""The binding between an EK certificate and the EK public area the TPM reports."""

from __future__ import annotations

from spire_tpm_attestor.errors import NotProven
from spire_tpm_attestor.tpm.structures import PublicArea, public_key_equals
from spire_tpm_attestor.x509.certificate import Certificate


def certificate_matches_public_area(cert: Certificate, area: PublicArea) -> bool:
    """Whether the certificate's key is the very key in the TPM public area.

    Raises MalformedInput when either key cannot be read."""
    return public_key_equals(area, cert.public_key())


def check_certificate_matches_public_area(cert: Certificate, area: PublicArea) -> None:
    """Prove the certificate certifies the very key in the TPM public area."""
    if not certificate_matches_public_area(cert, area):
        raise NotProven("certificate key does not match the TPM public area")
