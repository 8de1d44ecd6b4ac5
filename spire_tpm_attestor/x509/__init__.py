"""X.509 for TPM attestation: EK, DevID and CA certificates.

der          tolerant DER reading and canonical re-encoding
certificate  `Certificate` (one certificate as signed), load_certificate, certificate_der
bundle       load_ca_bundle (a file or a directory of CA certificates)
chain        verify_chain (by signature, with a signature cache), check_validity
ek           the EK certificate <-> EK public area binding

Every error is a `spire_tpm_attestor.errors` branch: no `cryptography` exception and no
bare ValueError leaves this package for bad input.
"""

from spire_tpm_attestor.x509.bundle import load_ca_bundle
from spire_tpm_attestor.x509.certificate import Certificate, certificate_der, load_certificate
from spire_tpm_attestor.x509.chain import check_validity, verify_chain
from spire_tpm_attestor.x509.ek import (
    certificate_matches_public_area,
    check_certificate_matches_public_area,
)

__all__ = [
    "Certificate",
    "certificate_der",
    "certificate_matches_public_area",
    "check_certificate_matches_public_area",
    "check_validity",
    "load_ca_bundle",
    "load_certificate",
    "verify_chain",
]
