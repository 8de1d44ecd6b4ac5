"""A throw-away EK CA for the tests and `make demo` (never shipped in the wheel).

`TestCA` is a root + intermediate CA that issues EK certificates shaped like a TPM
vendor's (TCG EK Credential Profile), and DevID certificates.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from spire_tpm_attestor.tpm.constants import (
    OID_TCG_EK_CERTIFICATE,
    OID_TCG_MANUFACTURER,
    OID_TCG_MODEL,
    OID_TCG_VERSION,
)

# "id:" + the TPM_PT_MANUFACTURER value in hex: "SWTP".
DEFAULT_MANUFACTURER = "id:53575450"
DEFAULT_MODEL = "swtpm"
DEFAULT_VERSION = "id:20191023"

CAPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
EKPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_CA_VALIDITY = datetime.timedelta(days=3650)
# TCG: a device certificate with no well-defined expiry uses 99991231235959Z.
_EK_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


def _new_key(key_type: Literal["ec", "rsa"]) -> CAPrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Issued:
    """A certificate and its subject's private key: a CA that can sign."""

    cert: x509.Certificate
    key: CAPrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def issue_ca(
    subject: x509.Name,
    key: CAPrivateKey,
    issuer: Issued | None = None,
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    ca: bool = True,
    path_length: int | None = None,
    key_cert_sign: bool = True,
    key_identifiers: bool = True,
) -> Issued:
    """A CA certificate for `key`, signed by `issuer` (self-signed when None).

    The one CA-certificate factory of the tests: `TestCA` uses it as is; the unit tests'
    `make_ca` turns its knobs (`ca`, `key_cert_sign`, validity, no key identifiers) to
    build broken chains.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    signer = issuer.key if issuer else key
    if key_identifiers:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        ).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    return Issued(builder.sign(signer, hashes.SHA256()), key)


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
    root_key: CAPrivateKey  # to re-sign an altered intermediate, as a manufacturer would

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
        now = datetime.datetime.now(datetime.UTC)
        not_before, not_after = now - datetime.timedelta(days=1), now + _CA_VALIDITY
        root_ca = issue_ca(root_name, root_key, not_before=not_before, not_after=not_after)
        intermediate_ca = issue_ca(
            intermediate_name,
            intermediate_key,
            root_ca,
            path_length=0,
            not_before=not_before,
            not_after=not_after,
        )
        root, intermediate = root_ca.cert, intermediate_ca.cert
        ca = cls(Path(directory), root, intermediate, intermediate_key, root_key)
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

    @property
    def root(self) -> Issued:
        return Issued(self.root_certificate, self.root_key)

    @property
    def intermediate(self) -> Issued:
        return Issued(self.intermediate_certificate, self.intermediate_key)

    def issue_ek_certificate(
        self,
        public_key: EKPublicKey,
        *,
        manufacturer: str = DEFAULT_MANUFACTURER,
        model: str = DEFAULT_MODEL,
        version: str = DEFAULT_VERSION,
        subject_cn: str | None = None,
        ca_issuers_url: str | None = None,
    ) -> x509.Certificate:
        """An EK certificate as the TCG EK Credential Profile shapes it.

        The subject is empty (or the placeholder `subject_cn`), so the TPM's identity lives
        in a critical SAN directoryName; the extensions are the ones vendors set, and an
        AIA caIssuers URL for the issuer's certificate when `ca_issuers_url` is given.
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
        builder = (
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
        )
        if ca_issuers_url is not None:
            builder = builder.add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.CA_ISSUERS,
                            x509.UniformResourceIdentifier(ca_issuers_url),
                        )
                    ]
                ),
                critical=False,
            )
        return builder.sign(self.intermediate_key, hashes.SHA256())

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
