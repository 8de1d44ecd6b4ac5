"""Issuer certificates from where manufacturers publish them, for EK chains NV leaves open.

- `nv_chain_certificates`: what one TCG EK chain NV index holds (0x01C00100-0x01C001FF):
  one or more DER certificates back to back, maybe padded.
- `ca_issuers_urls`: a certificate's AIA caIssuers URLs.
- `issuer_certificates`: what such a URL answers: DER, PEM, or PKCS#7 (DER or PEM).

Every certificate found here is an intermediate, never a trust anchor: the caller adds it
to a chain's candidates only. Bad input raises MalformedInput.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from spire_tpm_attestor.errors import MalformedInput
from spire_tpm_attestor.urls import http_hostname
from spire_tpm_attestor.x509 import der
from spire_tpm_attestor.x509.certificate import (
    Certificate,
    certificate_der,
    from_der,
    pem_certificates,
)

MAX_ISSUER_CERTIFICATES = 8  # in one NV index or one AIA answer
_PADDING = (0x00, 0xFF)
# DER of OID 1.2.840.113549.1.7.2 (PKCS#7 signedData).
_OID_SIGNED_DATA = bytes.fromhex("06092a864886f70d010702")
_TAG_CONTEXT_0_CONSTRUCTED = 0xA0
_PEM_PKCS7 = (b"-----BEGIN PKCS7-----", b"-----END PKCS7-----")


def nv_chain_certificates(data: bytes) -> list[bytes]:
    """The DER certificates in an EK chain NV index, in order; padding ends the list."""
    found: list[bytes] = []
    pos = 0
    while pos < len(data) and data[pos] not in _PADDING:
        tag, _, end = der.read_element(data, pos)
        if tag != der.TAG_SEQUENCE:
            raise MalformedInput(f"EK chain NV data: a non-certificate element at byte {pos}")
        found.append(data[pos:end])
        if len(found) > MAX_ISSUER_CERTIFICATES:
            raise MalformedInput(
                f"EK chain NV data: more than {MAX_ISSUER_CERTIFICATES} certificates"
            )
        pos = end
    return found


def ca_issuers_urls(certificate: Certificate) -> list[str]:
    """The http(s) caIssuers URLs of the certificate's AuthorityInformationAccess."""
    try:
        access = certificate.certificate.extensions.get_extension_for_class(
            x509.AuthorityInformationAccess
        ).value
    except x509.ExtensionNotFound:
        return []
    return [
        description.access_location.value
        for description in access
        if description.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        and isinstance(description.access_location, x509.UniformResourceIdentifier)
        and http_hostname(description.access_location.value) is not None
    ]


def issuer_certificates(body: bytes) -> list[Certificate]:
    """The certificates in a caIssuers answer: DER, PEM, or a PKCS#7 certs-only bundle."""
    text = body.lstrip()
    if text.startswith(_PEM_PKCS7[0]):
        ders = _pkcs7_certificates(_pem_pkcs7_der(text))
    elif text.startswith(b"-----BEGIN"):
        ders = pem_certificates(text)
    elif _is_pkcs7(body):
        ders = _pkcs7_certificates(body)
    else:
        ders = [certificate_der(body)]
    if not ders:
        raise MalformedInput("no certificate in the answer")
    if len(ders) > MAX_ISSUER_CERTIFICATES:
        raise MalformedInput(f"more than {MAX_ISSUER_CERTIFICATES} certificates in the answer")
    return [from_der(encoded) for encoded in ders]


def _pem_pkcs7_der(text: bytes) -> bytes:
    begin, end = _PEM_PKCS7
    stop = text.find(end)
    if stop < 0:
        raise MalformedInput("PEM: PKCS7 block without its END line")
    # A PKCS7 block's body is base64 like a CERTIFICATE block's: one reader for both.
    body = text[len(begin) : stop]
    return pem_certificates(b"-----BEGIN CERTIFICATE-----" + body + b"-----END CERTIFICATE-----")[0]


def _is_pkcs7(body: bytes) -> bool:
    try:
        tag, content, _ = der.read_element(body)
        return tag == der.TAG_SEQUENCE and der.children(content)[:1] == [_OID_SIGNED_DATA]
    except MalformedInput:
        return False


def _pkcs7_certificates(body: bytes) -> list[bytes]:
    """ContentInfo { signedData, [0] SignedData { version, digestAlgorithms,
    encapContentInfo, [0] IMPLICIT certificates, ... } }: the certificates, as encoded."""
    tag, content, end = der.read_element(body)
    parts = der.children(content) if tag == der.TAG_SEQUENCE and end == len(body) else []
    if len(parts) != 2 or parts[0] != _OID_SIGNED_DATA:
        raise MalformedInput("PKCS#7: not a signedData ContentInfo")
    tag, explicit, _ = der.read_element(parts[1])
    signed_data = der.children(explicit)
    if tag != _TAG_CONTEXT_0_CONSTRUCTED or len(signed_data) != 1:
        raise MalformedInput("PKCS#7: malformed content")
    tag, fields_content, _ = der.read_element(signed_data[0])
    fields = der.children(fields_content)
    if tag != der.TAG_SEQUENCE or len(fields) < 4:
        raise MalformedInput("PKCS#7: malformed SignedData")
    tag, certificates, _ = der.read_element(fields[3])
    if tag != _TAG_CONTEXT_0_CONSTRUCTED:
        return []  # no certificates field
    return [element for element in der.children(certificates) if element[0] == der.TAG_SEQUENCE]
