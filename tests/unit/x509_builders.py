"""Test CAs (from `testing.ca`) and EK-style certificates, plus a DER tree editor for
deliberately broken ones.

Real EK certificates break DER in ways `cryptography` refuses; these helpers rebuild a
certificate's TBS with such a defect and re-sign it, so the signature covers the broken
bytes exactly as a vendor's would.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from spire_tpm_attestor.testing.ca import Issued, issue_ca

NOW = datetime.datetime(2030, 6, 1, tzinfo=datetime.UTC)
TCG_EK_EKU = x509.ObjectIdentifier("2.23.133.8.1")

SubjectKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(
    common_name: str,
    issuer: Issued | None = None,
    *,
    ca: bool = True,
    path_length: int | None = None,
    key_cert_sign: bool = True,
    not_before: datetime.datetime = NOW - datetime.timedelta(days=365),
    not_after: datetime.datetime = NOW + datetime.timedelta(days=365),
    subject: x509.Name | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Issued:
    """A CA (self-signed when `issuer` is None) with an EC P-256 key (fresh unless given),
    made by `TestCA`'s factory, without key identifiers so chains are built by name."""
    return issue_ca(
        subject or name(common_name),
        key or ec.generate_private_key(ec.SECP256R1()),
        issuer,
        not_before=not_before,
        not_after=not_after,
        ca=ca,
        path_length=path_length,
        key_cert_sign=key_cert_sign,
        key_identifiers=False,
    )


def make_ek_cert(
    public_key: SubjectKey,
    issuer: Issued,
    *,
    issuer_name: x509.Name | None = None,
    not_before: datetime.datetime = NOW - datetime.timedelta(days=1),
    not_after: datetime.datetime = NOW + datetime.timedelta(days=1),
) -> x509.Certificate:
    """A TCG-profile EK certificate: empty subject, critical SAN dirName, TCG EKU."""
    tpm = x509.Name(
        [
            x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.1"), "id:49465800"),
            x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.2"), "SLB9670"),
            x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.3"), "id:000F0001"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer_name or issuer.cert.subject)
        .public_key(public_key)
        .serial_number(0x1234)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(tpm)]), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([TCG_EK_EKU]), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# --- DER tree editing -------------------------------------------------------------------


@dataclass
class Node:
    tag: int
    value: bytes | list[Node]

    @property
    def children(self) -> list[Node]:
        assert isinstance(self.value, list)
        return self.value


def _read(data: bytes, pos: int) -> tuple[Node, int]:
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    content = data[pos : pos + length]
    if tag & 0x20:
        children, offset = [], 0
        while offset < len(content):
            child, offset = _read(content, offset)
            children.append(child)
        return Node(tag, children), pos + length
    return Node(tag, content), pos + length


def parse(data: bytes) -> Node:
    return _read(data, 0)[0]


def encode(node: Node) -> bytes:
    content = node.value if isinstance(node.value, bytes) else b"".join(map(encode, node.value))
    size = len(content)
    if size < 0x80:
        return bytes([node.tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([node.tag, 0x80 | len(length)]) + length + content


def resign(cert: x509.Certificate, issuer: Issued, edit: Callable[[list[Node]], None]) -> bytes:
    """Apply `edit` to the TBSCertificate fields and sign the result with `issuer`."""
    root = parse(der(cert))
    tbs = root.children[0]
    edit(tbs.children)
    tbs_der = encode(tbs)
    assert isinstance(issuer.key, ec.EllipticCurvePrivateKey)
    signature = issuer.key.sign(tbs_der, ec.ECDSA(hashes.SHA256()))
    root.value = [tbs, root.children[1], Node(0x03, b"\x00" + signature)]
    return encode(root)


def extensions(tbs_fields: list[Node]) -> list[Node]:
    """The Extension nodes of a v3 TBSCertificate ([3] EXPLICIT SEQUENCE OF)."""
    return tbs_fields[-1].children[0].children


def oid_node(dotted: str) -> Node:
    return Node(0x06, _oid(dotted))


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytes([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return out
