"""Test CAs (from `testing.ca`) and EK-style certificates, plus a DER tree editor for
deliberately broken ones.

Real EK certificates break DER in ways `cryptography` refuses; these helpers rebuild a
certificate's TBS with such a defect and re-sign it, so the signature covers the broken
bytes exactly as a vendor's would. `DEVIATIONS` replicates each deviation class seen in
manufacturers' EK and CA certificates, and where in the bytes to alter one to forge.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
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
    long_length: bool = False  # encode the length in long form even when short (not DER)

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
    if size < 0x80 and not node.long_length:
        return bytes([node.tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([node.tag, 0x80 | len(length)]) + length + content


def resign(
    cert: x509.Certificate | bytes, issuer: Issued, edit: Callable[[list[Node]], object]
) -> bytes:
    """Apply `edit` to the TBSCertificate fields and sign the result with `issuer`
    (ECDSA or RSA PKCS#1 v1.5, with SHA-256)."""
    root = parse(cert if isinstance(cert, bytes) else der(cert))
    tbs = root.children[0]
    edit(tbs.children)
    tbs_der = encode(tbs)
    if isinstance(issuer.key, rsa.RSAPrivateKey):
        signature = issuer.key.sign(tbs_der, padding.PKCS1v15(), hashes.SHA256())
    else:
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


def find_extension(tbs_fields: list[Node], oid: str) -> Node | None:
    for extension in extensions(tbs_fields):
        if extension.children[0].value == _oid(oid):
            return extension
    return None


def add_extension(tbs_fields: list[Node], oid: str, value: Node, critical: bool = False) -> None:
    flag = [Node(0x01, b"\xff")] if critical else []
    extensions(tbs_fields).append(Node(0x30, [oid_node(oid), *flag, Node(0x04, encode(value))]))


# --- deviation classes seen in manufacturers' certificates ------------------------------

SAN = "2.5.29.17"
BASIC_CONSTRAINTS = "2.5.29.19"
CERTIFICATE_POLICIES = "2.5.29.32"
AIA = "1.3.6.1.5.5.7.1.1"
CA_ISSUERS = "1.3.6.1.5.5.7.48.2"
USER_NOTICE = "1.3.6.1.5.5.7.2.2"
ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"
RSAES_OAEP = "1.2.840.113549.1.1.7"


@dataclass(frozen=True)
class Deviation:
    """One deviation class, replicated on a clean certificate of `issuer`.

    `make(clean DER, issuer)` returns the deviant certificate bytes (re-signed where the
    deviation is in the signed bytes) and a byte string inside the deviation whose last
    byte `forge` alters: the forgery must never verify. `quirk` is the name
    `Certificate.quirks` gives it.
    """

    label: str
    quirk: str
    make: Callable[[bytes, Issued], tuple[bytes, bytes]]
    for_ca: bool = False  # applies to CA certificates
    for_ek: bool = True  # applies to EK certificates (whose subject is empty)
    rsa_key: bool = False  # needs a certificate for an RSA key
    flip: int = 0x01  # what `forge` XORs into the byte
    wrap: Callable[[bytes], bytes] | None = None  # for a deviation around the DER

    def forge(self, clean: bytes, issuer: Issued) -> bytes:
        """The deviant certificate with one byte altered inside the deviation (around the
        DER, where nothing is signed: in the signed serial number instead)."""
        if self.wrap is not None:
            return self.wrap(_altered(clean, _serial_needle(clean), self.flip))
        return _altered(*self.make(clean, issuer), self.flip)


def _altered(data: bytes, needle: bytes, flip: int) -> bytes:
    at = data.index(needle) + len(needle) - 1  # the first occurrence: in the TBS
    return data[:at] + bytes([data[at] ^ flip]) + data[at + 1 :]


def _signed(edit: Callable[[list[Node]], bytes]) -> Callable[[bytes, Issued], tuple[bytes, bytes]]:
    """A deviation in the TBS: `edit` changes the fields and returns the needle."""

    def make(clean: bytes, issuer: Issued) -> tuple[bytes, bytes]:
        needle = b""

        def apply(fields: list[Node]) -> None:
            nonlocal needle
            needle = edit(fields)

        return resign(clean, issuer, apply), needle

    return make


def _san_name(fields: list[Node]) -> tuple[Node, Node]:
    """The SAN extension and its parsed value."""
    extension = find_extension(fields, SAN)
    assert extension is not None
    value = extension.children[-1].value
    assert isinstance(value, bytes)
    return extension, parse(value)


def _san_unsorted_set(fields: list[Node]) -> bytes:
    """One family's EK certificates: the TCG attributes in one RDN, SET OF not sorted."""
    extension, san = _san_name(fields)
    directory_name = san.children[0].children[0]
    attributes = [encode(a) for rdn in directory_name.children for a in rdn.children]
    unsorted = Node(0x31, [parse(a) for a in sorted(attributes, reverse=True)])
    directory_name.value = [unsorted]
    extension.children[-1].value = encode(san)
    return encode(unsorted)


def _subject_unsorted_set(fields: list[Node]) -> bytes:
    """A CA subject with its attributes in one RDN, SET OF not sorted."""
    subject = _tbs_field(fields, 4)
    attributes = [encode(a) for rdn in subject.children for a in rdn.children]
    unsorted = Node(0x31, [parse(a) for a in sorted(attributes, reverse=True)])
    subject.value = [unsorted]
    return encode(unsorted)


def _ca_false(fields: list[Node]) -> bytes:
    """BasicConstraints with cA FALSE, a DEFAULT, encoded; altered it says TRUE."""
    extension = find_extension(fields, BASIC_CONSTRAINTS)
    assert extension is not None
    extension.children[-1].value = bytes.fromhex("3003010100")
    return bytes.fromhex("3003010100")


def _first_noncritical(fields: list[Node]) -> Node:
    return next(e for e in extensions(fields) if e.children[1].tag != 0x01)


def _critical_false(fields: list[Node]) -> bytes:
    """Intel PTT style: Extension.critical = FALSE encoded."""
    extension = _first_noncritical(fields)
    extension.children.insert(1, Node(0x01, b"\x00"))
    return encode(extension.children[0]) + b"\x01\x01\x00"


def _critical_true_as_01(fields: list[Node]) -> bytes:
    """critical = TRUE as 0x01, not DER's 0xFF; altered it says FALSE."""
    extension = _first_noncritical(fields)
    extension.children.insert(1, Node(0x01, b"\x01"))
    return encode(extension.children[0]) + b"\x01\x01\x01"


def _tbs_field(fields: list[Node], index: int) -> Node:
    """TBS field `index` as numbered without the optional version (0: serial)."""
    return fields[index + 1 if fields[0].tag == 0xA0 else index]


def _serial(fields: list[Node]) -> Node:
    return _tbs_field(fields, 0)


def _padded_serial(fields: list[Node]) -> bytes:
    """STMicro style: a padded, non-minimal INTEGER; altered, the pad changes the value."""
    serial = _serial(fields)
    assert isinstance(serial.value, bytes)
    serial.value = b"\x00" + serial.value
    return encode(serial)[:3]


def _negative_serial(fields: list[Node]) -> bytes:
    serial = _serial(fields)
    serial.value = bytes.fromhex("8f1e2d3c4b5a")
    return encode(serial)


def _long_serial(fields: list[Node]) -> bytes:
    serial = _serial(fields)
    serial.value = bytes(range(1, 22))  # 21 octets; RFC 5280 allows 20
    return encode(serial)


def _ecdsa_null(fields: list[Node]) -> bytes:
    """An ECDSA signature algorithm with NULL parameters (RFC 5758: absent)."""
    algorithm = _tbs_field(fields, 1)
    assert algorithm.children[0].value == _oid(ECDSA_WITH_SHA256)
    algorithm.children.append(Node(0x05, b""))
    return encode(algorithm.children[0]) + b"\x05"


def _ecdsa_null_everywhere(clean: bytes, issuer: Issued) -> tuple[bytes, bytes]:
    deviant, needle = _signed(_ecdsa_null)(clean, issuer)
    root = parse(deviant)
    root.children[1].children.append(Node(0x05, b""))  # the outer copy: not signed
    return encode(root), needle


def _version_3(fields: list[Node]) -> bytes:
    """An X.509 version field of 3 (v4, which does not exist); altered it says v3."""
    fields[0] = Node(0xA0, [Node(0x02, b"\x03")])
    return bytes.fromhex("a003020103")


def _san_edi_party_name(fields: list[Node]) -> bytes:
    extension, san = _san_name(fields)
    edi = Node(0xA5, [Node(0xA1, [Node(0x0C, b"party")])])
    san.children.append(edi)
    extension.children[-1].value = encode(san)
    return encode(edi)


def _aia_x400_address(fields: list[Node]) -> bytes:
    """AIA whose first caIssuers location is an x400Address, then a URI."""
    x400 = Node(0xA3, [Node(0x30, [Node(0x61, [Node(0x13, b"US")])])])
    uri = Node(0x86, b"http://ca.example/issuer.cer")
    value = Node(
        0x30,
        [
            Node(0x30, [oid_node(CA_ISSUERS), x400]),
            Node(0x30, [oid_node(CA_ISSUERS), uri]),
        ],
    )
    add_extension(fields, AIA, value)
    return encode(x400)


def _policies_padded_integer(fields: list[Node]) -> bytes:
    """Infineon style critical certificatePolicies, with a padded noticeNumber inside."""
    pad = Node(0x02, b"\x00\x07")
    notice = Node(0x30, [Node(0x30, [Node(0x0C, b"TCG"), Node(0x30, [pad])])])
    qualifier = Node(0x30, [oid_node(USER_NOTICE), notice])
    policy = Node(0x30, [oid_node("2.23.133.2.1"), Node(0x30, [qualifier])])
    add_extension(fields, CERTIFICATE_POLICIES, Node(0x30, [policy]), critical=True)
    return encode(pad)[:3]


def _long_length(fields: list[Node]) -> bytes:
    """A length in long form though short (0x81 0x05): BER, not DER."""
    extension = find_extension(fields, BASIC_CONSTRAINTS)
    assert extension is not None
    extension.children[-1].long_length = True
    return encode(extension.children[-1])[:3]


def _rsaes_oaep(fields: list[Node]) -> bytes:
    """Infineon style: an RSA EK under id-RSAES-OAEP; altered, it reads rsaEncryption."""
    spki = _tbs_field(fields, 5)
    spki.children[0].value = [oid_node(RSAES_OAEP), Node(0x30, [])]
    return encode(oid_node(RSAES_OAEP))


def _serial_needle(clean: bytes) -> bytes:
    return encode(_serial(parse(clean).children[0].children))


def _wrapping(label: str, wrap: Callable[[bytes], bytes]) -> Deviation:
    """A deviation around the DER, named `label`."""
    return Deviation(label, label, lambda clean, _: (wrap(clean), _serial_needle(clean)), wrap=wrap)


def _pem_with_text(clean: bytes) -> bytes:
    pem = x509.load_der_x509_certificate(clean).public_bytes(serialization.Encoding.PEM)
    return b"EK certificate of node 7, exported 2024-03-01\n" + pem + b"(end)\n"


DEVIATIONS = (
    Deviation("san-unsorted-set", "unsorted-set", _signed(_san_unsorted_set)),
    Deviation("subject-unsorted-set", "unsorted-set", _signed(_subject_unsorted_set), True, False),
    Deviation("basic-constraints-ca-false", "encoded-default", _signed(_ca_false)),
    Deviation("extension-critical-false", "encoded-default", _signed(_critical_false), True),
    Deviation("critical-true-as-01", "non-der-boolean", _signed(_critical_true_as_01), True),
    Deviation("padded-serial", "non-minimal-integer", _signed(_padded_serial), True),
    Deviation(
        "policies-padded-integer", "non-minimal-integer", _signed(_policies_padded_integer), True
    ),
    Deviation("long-form-length", "non-minimal-length", _signed(_long_length), True),
    Deviation("negative-serial", "non-positive-serial", _signed(_negative_serial), True),
    Deviation("long-serial", "long-serial", _signed(_long_serial), True),
    Deviation("ecdsa-null-parameters", "ecdsa-null-parameters", _ecdsa_null_everywhere, True),
    Deviation("version-3", "unknown-version", _signed(_version_3), True),
    Deviation("san-edi-party-name", "unsupported-general-name", _signed(_san_edi_party_name)),
    Deviation("aia-x400-address", "unsupported-general-name", _signed(_aia_x400_address), True),
    # Altered to 01 (rsaEncryption), the key reads the same: the signature must still fail.
    Deviation("rsaes-oaep-key", "rsaes-oaep-key", _signed(_rsaes_oaep), rsa_key=True, flip=0x06),
    _wrapping("tcg-nv-header", lambda d: b"\x10\x01\x00" + len(d).to_bytes(2, "big") + d),
    _wrapping(
        "tcg-stored-certificate",
        lambda d: b"\x10\x01\x00" + (len(d) + 2).to_bytes(2, "big") + b"\x10\x02" + d,
    ),
    _wrapping("nv-padding", lambda d: d + b"\xff" * 300),
    _wrapping("trailing-bytes", lambda d: d + b"\x04\x02ok"),
    _wrapping("pem-surrounding-text", _pem_with_text),
)
CA_DEVIATIONS = tuple(deviation for deviation in DEVIATIONS if deviation.for_ca)
EK_DEVIATIONS = tuple(deviation for deviation in DEVIATIONS if deviation.for_ek)
