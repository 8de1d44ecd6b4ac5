"""X.509 for TPM attestation: EK, DevID and CA certificates.

der          tolerant DER reading and canonical re-encoding (the quirks inside the DER)
certificate  `Certificate` (one certificate as signed, with the quirks it was read
             despite), load_certificate, certificate_der, NV and PEM unwrapping
bundle       the certificates of a CA file, strictly or each judged alone as an anchor
chain        verify_chain (by signature, with a signature cache), check_validity
ek           the EK certificate <-> EK public area binding

Every error is a `spire_tpm_attestor.errors` branch: no `cryptography` exception and no
bare ValueError leaves this package for bad input.
"""

from spire_tpm_attestor.x509.bundle import (
    anchor_problem,
    ca_certificates_in,
    certificates_in,
    load_ca_bundle,
)
from spire_tpm_attestor.x509.certificate import (
    Certificate,
    certificate_der,
    load_certificate,
    unwrap_certificate,
)
from spire_tpm_attestor.x509.chain import Expired, check_validity, verify_chain
from spire_tpm_attestor.x509.ek import (
    certificate_matches_public_area,
    check_certificate_matches_public_area,
)

__all__ = [
    "Certificate",
    "Expired",
    "anchor_problem",
    "ca_certificates_in",
    "certificate_der",
    "certificate_matches_public_area",
    "certificates_in",
    "check_certificate_matches_public_area",
    "check_validity",
    "load_ca_bundle",
    "load_certificate",
    "unwrap_certificate",
    "verify_chain",
]
