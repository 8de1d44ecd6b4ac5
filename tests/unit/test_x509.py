"""EK certificates: swtpm's real chain, TCG quirks, broken DER, and chain failures."""

from __future__ import annotations

import base64
import datetime
import hashlib
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.errors import MalformedInput, NotProven, SourceUnavailable
from spire_tpm_attestor.tpm.structures import parse_tpm2b_public
from spire_tpm_attestor.x509 import (
    Certificate,
    chain,
    check_certificate_matches_public_area,
    load_ca_bundle,
    load_certificate,
    verify_chain,
)
from tests.unit.tpm_builders import VECTORS, vector
from tests.unit.x509_builders import (
    NOW,
    Issued,
    Node,
    der,
    extensions,
    make_ca,
    make_ek_cert,
    oid_node,
    resign,
)

EKS = vector("swtpm_ek.json")
SWTPM_RSA_CERT = bytes.fromhex(EKS["rsa2048"]["ek_certificate"])
SWTPM_P384_CERT = bytes.fromhex(EKS["ecc384"]["ek_certificate"])
SWTPM_ROOT = (VECTORS / "swtpm_localca_root.pem").read_bytes()
SWTPM_INTERMEDIATE = (VECTORS / "swtpm_localca_intermediate.pem").read_bytes()
LATER = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)  # swtpm certs start 2026-11-23


@pytest.fixture(scope="module")
def root() -> Issued:
    return make_ca("Test EK Root")


@pytest.fixture(scope="module")
def intermediate(root: Issued) -> Issued:
    return make_ca("Test EK Intermediate", root)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def ek_key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def load(cert: x509.Certificate | Issued) -> Certificate:
    return load_certificate(der(cert.cert if isinstance(cert, Issued) else cert))


# --- swtpm's real EK certificates -------------------------------------------------------


def test_swtpm_rsa_ek_certificate() -> None:
    cert = load_certificate(SWTPM_RSA_CERT)
    assert not cert.lenient and cert.der == SWTPM_RSA_CERT
    assert (cert.tcg_manufacturer, cert.tcg_model, cert.tcg_version) == (
        "id:00001014",
        "swtpm",
        "id:20191023",
    )
    assert cert.issuer_common_name == "swtpm-localca"
    assert cert.subject_common_name == "unknown"
    assert cert.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.11"
    assert cert.tbs_bytes == cert.certificate.tbs_certificate_bytes
    assert cert.signature == cert.certificate.signature
    assert not cert.is_ca
    assert cert.sha256_fingerprint == hashlib.sha256(SWTPM_RSA_CERT).hexdigest()


def test_swtpm_ek_certificates_match_their_eks() -> None:
    rsa_ek = parse_tpm2b_public(bytes.fromhex(EKS["rsa2048"]["ek_public"]))
    p384_ek = parse_tpm2b_public(bytes.fromhex(EKS["ecc384"]["ek_public"]))
    check_certificate_matches_public_area(load_certificate(SWTPM_RSA_CERT), rsa_ek)
    check_certificate_matches_public_area(load_certificate(SWTPM_P384_CERT), p384_ek)


def test_ek_certificate_with_another_key_is_rejected() -> None:
    ecc_ek = parse_tpm2b_public(bytes.fromhex(EKS["ecc256"]["ek_public"]))
    p384_ek = parse_tpm2b_public(bytes.fromhex(EKS["ecc384"]["ek_public"]))
    with pytest.raises(NotProven, match="does not match the TPM public area"):
        check_certificate_matches_public_area(load_certificate(SWTPM_RSA_CERT), ecc_ek)
    with pytest.raises(NotProven, match="does not match"):
        check_certificate_matches_public_area(load_certificate(SWTPM_P384_CERT), ecc_ek)
    with pytest.raises(NotProven, match="does not match"):
        check_certificate_matches_public_area(load_certificate(SWTPM_RSA_CERT), p384_ek)


def test_ek_hash_vectors() -> None:
    # Cross-checked at capture time with
    # `openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum`.
    rsa_key = load_certificate(SWTPM_RSA_CERT).public_key()
    assert ek_hash(rsa_key) == "94fbc1eab1067f5b25c10513013806792a547e1a1359863ff38936a903bd8ebd"
    p384_key = load_certificate(SWTPM_P384_CERT).public_key()
    assert ek_hash(p384_key) == "d4c3a8c847682af19223fd9cd5f560333b11aa0d6f730fb8c6b1327badfd3da5"
    # The EK public area yields the same hash as its certificate.
    rsa_ek = parse_tpm2b_public(bytes.fromhex(EKS["rsa2048"]["ek_public"]))
    assert ek_hash(rsa_ek.public_key()) == ek_hash(rsa_key)


@pytest.mark.parametrize("cert_der", [SWTPM_RSA_CERT, SWTPM_P384_CERT], ids=["rsa", "p384"])
def test_swtpm_chain_verifies(cert_der: bytes) -> None:
    leaf = load_certificate(cert_der)
    anchor = load_certificate(SWTPM_ROOT)
    chain = verify_chain(leaf, [load_certificate(SWTPM_INTERMEDIATE)], [anchor], LATER)
    assert [c.subject_common_name for c in chain] == [
        "unknown",
        "swtpm-localca",
        "swtpm-localca-rootca",
    ]
    assert chain[-1].sha256_fingerprint == anchor.sha256_fingerprint
    # With the intermediate in the bundle too, the anchor is still the root.
    both = [load_certificate(SWTPM_INTERMEDIATE), anchor]
    assert [c.der for c in verify_chain(leaf, [], both, LATER)] == [c.der for c in chain]
    # With only the intermediate trusted, the chain ends there.
    only = verify_chain(leaf, [], [load_certificate(SWTPM_INTERMEDIATE)], LATER)
    assert [c.subject_common_name for c in only] == ["unknown", "swtpm-localca"]


def test_swtpm_chain_without_intermediate_fails() -> None:
    leaf = load_certificate(SWTPM_RSA_CERT)
    with pytest.raises(NotProven, match="does not chain to a trusted CA"):
        verify_chain(leaf, [], [load_certificate(SWTPM_ROOT)], LATER)


# --- loading: PEM, NV wrapping, errors --------------------------------------------------


def test_pem_and_nv_forms() -> None:
    pem = (
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(SWTPM_RSA_CERT)
        + b"-----END CERTIFICATE-----\n"
    )
    assert load_certificate(pem).der == SWTPM_RSA_CERT
    padded = SWTPM_RSA_CERT + b"\xff" * 200
    assert load_certificate(padded).der == SWTPM_RSA_CERT
    header = b"\x10\x01\x00" + struct.pack(">H", len(SWTPM_RSA_CERT))
    assert load_certificate(header + SWTPM_RSA_CERT + b"\x00" * 16).der == SWTPM_RSA_CERT


def test_load_errors() -> None:
    with pytest.raises(MalformedInput, match="expected one certificate, found 2"):
        load_certificate(SWTPM_ROOT + SWTPM_INTERMEDIATE)
    with pytest.raises(MalformedInput, match="neither PEM nor a DER SEQUENCE"):
        load_certificate(b"\x04\x03abc")
    with pytest.raises(MalformedInput, match="runs past the end"):
        load_certificate(SWTPM_RSA_CERT[:-1])
    with pytest.raises(MalformedInput, match="truncated TCG NV header"):
        load_certificate(b"\x10\x01\x00\x01")
    with pytest.raises(MalformedInput, match="limit is 65536"):
        load_certificate(bytes(65537))
    with pytest.raises(MalformedInput, match="bad base64"):
        load_certificate(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
    with pytest.raises(MalformedInput, match="no CERTIFICATE block"):
        load_certificate(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_unparseable_fields_are_rejected(root: Issued) -> None:
    cert = make_ek_cert(ek_key(), root)

    def garbage_validity(fields: list[Node]) -> None:
        fields[4] = Node(0x30, [Node(0x02, b"\x01")])

    with pytest.raises(MalformedInput, match="cannot be parsed"):
        load_certificate(resign(cert, root, garbage_validity))

    def swap_inner_algorithm(fields: list[Node]) -> None:
        fields[2] = Node(0x30, [oid_node("1.2.840.10045.4.3.3")])  # ecdsa-with-SHA384

    with pytest.raises(MalformedInput, match="inner and outer signature algorithms"):
        load_certificate(resign(cert, root, swap_inner_algorithm))


def test_unknown_version_is_read_as_v3(root: Issued) -> None:
    """cryptography raises InvalidVersion (not a ValueError) for an unknown version."""
    cert = make_ek_cert(ek_key(), root)

    def version_9(fields: list[Node]) -> None:
        fields[0] = Node(0xA0, [Node(0x02, b"\x08")])

    broken = resign(cert, root, version_9)
    with pytest.raises(x509.InvalidVersion):
        x509.load_der_x509_certificate(broken)  # the premise
    loaded = load_certificate(broken)
    assert loaded.quirks == ("unknown-version",)
    verify_chain(loaded, [], [load(root)], NOW)


# --- DER that cryptography refuses -------------------------------------------------------


def _explicit_critical_false(fields: list[Node]) -> None:
    for extension in extensions(fields):
        if extension.children[0].value == bytes.fromhex("551d25"):  # extendedKeyUsage
            extension.children.insert(1, Node(0x01, b"\x00"))


def test_lenient_der_with_encoded_critical_false_verifies(root: Issued) -> None:
    """Intel PTT style: Extension.critical = FALSE explicitly encoded (not DER)."""
    broken = resign(make_ek_cert(ek_key(), root), root, _explicit_critical_false)
    with pytest.raises(ValueError, match="EncodedDefault"):
        x509.load_der_x509_certificate(broken)  # the premise: cryptography refuses it
    cert = load_certificate(broken)
    assert cert.lenient and cert.der == broken
    assert b"\x01\x01\x00" in cert.tbs_bytes  # the original TBS, not a re-encoding
    assert cert.tcg_manufacturer == "id:49465800" and cert.tcg_model == "SLB9670"
    assert verify_chain(cert, [], [load(root)], NOW)[-1].der == der(root.cert)
    # The signature is checked over the original bytes: one flipped bit breaks it.
    tampered = broken.replace(b"SLB9670", b"SLB9671")
    with pytest.raises(NotProven, match="does not chain"):
        verify_chain(load_certificate(tampered), [], [load(root)], NOW)


def _lenient_and_verified(broken: bytes, root: Issued) -> Certificate:
    with pytest.raises(ValueError):
        x509.load_der_x509_certificate(broken)  # the premise: cryptography refuses it
    cert = load_certificate(broken)
    assert cert.lenient
    verify_chain(cert, [], [load(root)], NOW)
    return cert


def test_lenient_der_with_padded_serial(root: Issued) -> None:
    """STMicro style: a non-minimal INTEGER."""

    def pad_serial(fields: list[Node]) -> None:
        assert isinstance(fields[1].value, bytes)
        fields[1].value = b"\x00" + fields[1].value

    broken = resign(make_ek_cert(ek_key(), root), root, pad_serial)
    assert _lenient_and_verified(broken, root).serial_number == 0x1234


def test_lenient_der_with_unsorted_set(root: Issued) -> None:
    """Nuvoton style: a multi-valued RDN whose SET OF is not in DER order."""

    def attribute(oid: str) -> Node:
        return Node(0x30, [oid_node(oid), Node(0x0C, b"x")])

    def unsorted_subject(fields: list[Node]) -> None:
        fields[5] = Node(0x30, [Node(0x31, [attribute("2.5.4.10"), attribute("2.5.4.3")])])

    broken = resign(make_ek_cert(ek_key(), root), root, unsorted_subject)
    assert _lenient_and_verified(broken, root).subject_common_name == "x"


def test_rsaes_oaep_spki(root: Issued, rsa_key: rsa.RSAPrivateKey) -> None:
    """Infineon style: the EK's SPKI algorithm is id-RSAES-OAEP."""

    def oaep(fields: list[Node]) -> None:
        algorithm = fields[6].children[0]
        algorithm.value = [oid_node("1.2.840.113549.1.1.7"), Node(0x30, [])]

    broken = resign(make_ek_cert(rsa_key.public_key(), root), root, oaep)
    # The premise; older cryptography raises ValueError instead of UnsupportedAlgorithm.
    with pytest.raises((UnsupportedAlgorithm, ValueError)):
        x509.load_der_x509_certificate(broken).public_key()
    cert = load_certificate(broken)
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.public_numbers() == rsa_key.public_key().public_numbers()
    assert ek_hash(key) == ek_hash(rsa_key.public_key())
    verify_chain(cert, [], [load(root)], NOW)


def test_issuer_name_encoding_differs_from_ca_subject() -> None:
    """Equal names in different string types: parents are matched by signature, not bytes."""
    root = make_ca(
        "ca",
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Vendor EK CA")]),
    )
    printable = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "Vendor EK CA", _ASN1Type.PrintableString)]
    )
    leaf_cert = make_ek_cert(ek_key(), root, issuer_name=printable)
    with pytest.raises(ValueError, match="subject does not match"):
        leaf_cert.verify_directly_issued_by(root.cert)  # the premise
    chain = verify_chain(load(leaf_cert), [], [load(root)], NOW)
    assert chain[-1].der == der(root.cert)


def test_issuer_name_that_differs_from_the_ca_subject_still_chains_by_signature() -> None:
    """A name that is not equal (here by case) is no issuer by name: the search by every
    candidate's signature still finds the CA that signed."""
    root = make_ca("Vendor EK CA")
    shouting = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "VENDOR EK CA")])
    leaf = load(make_ek_cert(ek_key(), root, issuer_name=shouting))
    assert leaf.issuer != load(root).subject  # the premise
    chain = verify_chain(leaf, [], [load(root)], NOW)
    assert [c.der for c in chain] == [leaf.der, der(root.cert)]


def test_a_new_leaf_is_checked_against_its_named_issuer_only(
    root: Issued, intermediate: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root and intermediate both in the bundle, as CA directories hold them: the leaf's
    # signature is checked with the intermediate's key, not with the root's as well.
    leaf = load(make_ek_cert(ek_key(), intermediate))
    checked: list[tuple[bytes, bytes]] = []
    real_signed_by = chain._signed_by

    def recording(child: Certificate, parent: Certificate) -> bool:
        checked.append((child.der, parent.der))
        return real_signed_by(child, parent)

    monkeypatch.setattr(chain, "_signed_by", recording)
    found = verify_chain(leaf, [], [load(root), load(intermediate)], NOW)
    assert [c.der for c in found[1:]] == [der(intermediate.cert), der(root.cert)]
    assert [parent for child, parent in checked if child == leaf.der] == [der(intermediate.cert)]


# --- chain failures ---------------------------------------------------------------------


def test_chain_with_intermediates(root: Issued, intermediate: Issued) -> None:
    leaf = load(make_ek_cert(ek_key(), intermediate))
    unrelated = make_ca("Unrelated", make_ca("Other root"))
    chain = verify_chain(leaf, [load(unrelated), load(intermediate)], [load(root)], NOW)
    assert [c.der for c in chain[1:]] == [der(intermediate.cert), der(root.cert)]


def test_remembered_signatures_never_vouch_for_a_changed_certificate(root: Issued) -> None:
    # Checks are remembered by the certificates' whole DER: after the genuine certificate
    # verified, one with the same signature over a changed TBS must still fail.
    genuine = make_ek_cert(ek_key(), root)
    assert verify_chain(load(genuine), [], [load(root)], NOW)
    der = load(genuine).der
    serial = genuine.serial_number.to_bytes(20, "big").lstrip(b"\x00")
    assert der.count(serial) == 1
    forged = der.replace(serial, bytes([serial[0] ^ 0x01]) + serial[1:])
    with pytest.raises(NotProven, match="does not chain"):
        verify_chain(load_certificate(forged), [], [load(root)], NOW)
    assert verify_chain(load(genuine), [], [load(root)], NOW)  # and the genuine one still does


def test_unusable_root_falls_back_to_the_nearest_anchor() -> None:
    day = datetime.timedelta(days=1)
    old_root = make_ca("Expired root", not_before=NOW - 9 * day, not_after=NOW - day)
    middle = make_ca("Trusted intermediate", old_root)
    leaf = load(make_ek_cert(ek_key(), middle))
    chain = verify_chain(leaf, [], [load(old_root), load(middle)], NOW)
    assert [c.der for c in chain] == [leaf.der, der(middle.cert)]
    with pytest.raises(NotProven, match=r"'CN=Expired root'.* has expired"):
        verify_chain(leaf, [load(middle)], [load(old_root)], NOW)


def test_chain_from_another_ca(root: Issued) -> None:
    other = make_ca("Test EK Root")  # same name, different key
    leaf = load(make_ek_cert(ek_key(), other))
    with pytest.raises(NotProven, match="no trusted issuer signed it"):
        verify_chain(leaf, [], [load(root)], NOW)


def test_non_ca_parent(root: Issued) -> None:
    not_a_ca = make_ca("Leafy", root, ca=False)
    leaf = load(make_ek_cert(ek_key(), not_a_ca))
    with pytest.raises(NotProven, match="is not a CA"):
        verify_chain(leaf, [load(not_a_ca)], [load(root)], NOW)
    # The same certificate configured as an anchor is still not allowed to issue.
    with pytest.raises(NotProven, match="is not a CA"):
        verify_chain(leaf, [], [load(not_a_ca)], NOW)


def test_parent_without_key_cert_sign(root: Issued) -> None:
    no_sign = make_ca("No certsign", root, key_cert_sign=False)
    leaf = load(make_ek_cert(ek_key(), no_sign))
    with pytest.raises(NotProven, match="may not sign certificates"):
        verify_chain(leaf, [load(no_sign)], [load(root)], NOW)


def test_path_length_constraint() -> None:
    strict_root = make_ca("Strict root", path_length=0)
    middle = make_ca("Middle", strict_root)
    direct = load(make_ek_cert(ek_key(), strict_root))
    verify_chain(direct, [], [load(strict_root)], NOW)
    through_middle = load(make_ek_cert(ek_key(), middle))
    with pytest.raises(NotProven, match="exceeds its path length"):
        verify_chain(through_middle, [load(middle)], [load(strict_root)], NOW)


def test_expired_and_not_yet_valid(root: Issued) -> None:
    day = datetime.timedelta(days=1)
    expired = load(make_ek_cert(ek_key(), root, not_before=NOW - 3 * day, not_after=NOW - day))
    with pytest.raises(NotProven, match="has expired"):
        verify_chain(expired, [], [load(root)], NOW)
    future = load(make_ek_cert(ek_key(), root, not_before=NOW + day, not_after=NOW + 3 * day))
    with pytest.raises(NotProven, match="is not yet valid"):
        verify_chain(future, [], [load(root)], NOW)
    old_ca = make_ca("Old intermediate", root, not_before=NOW - 9 * day, not_after=NOW - day)
    leaf = load(make_ek_cert(ek_key(), old_ca))
    with pytest.raises(NotProven, match=r"'CN=Old intermediate'.* has expired"):
        verify_chain(leaf, [load(old_ca)], [load(root)], NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_chain(leaf, [], [load(root)], NOW.replace(tzinfo=None))


def test_chain_depth_is_bounded() -> None:
    cas = [make_ca("CA 0")]
    for i in range(1, 9):
        cas.append(make_ca(f"CA {i}", cas[-1]))
    leaf = load(make_ek_cert(ek_key(), cas[-1]))
    intermediates = [load(ca) for ca in cas[1:]]
    # leaf + 8 intermediates + root = 10 certificates, more than MAX_CHAIN_DEPTH.
    with pytest.raises(NotProven, match="does not chain"):
        verify_chain(leaf, intermediates, [load(cas[0])], NOW)
    assert len(verify_chain(leaf, intermediates, [load(cas[2])], NOW)) == 8


def test_cross_signed_intermediates_terminate(root: Issued) -> None:
    # Two CAs that sign each other and never reach the anchor: the search must end.
    a = make_ca("A")
    b = make_ca("B", a)
    a_by_b = Issued(make_ca("A", b).cert, a.key)
    leaf = load(make_ek_cert(ek_key(), b))
    with pytest.raises(NotProven, match="does not chain"):
        verify_chain(leaf, [load(b), load(a_by_b), load(a)], [load(root)], NOW)


def test_anchor_is_the_self_signed_root_not_a_rollover_certificate() -> None:
    # Key rollover: the new root key certified under the old one, with the same name.
    old_root = make_ca("Vendor Root")
    new_key = ec.generate_private_key(ec.SECP256R1())
    rollover = Issued(make_ca("Vendor Root", old_root, key=new_key).cert, new_key)
    leaf = load(make_ek_cert(ek_key(), rollover))
    chain = verify_chain(leaf, [], [load(rollover), load(old_root)], NOW)
    assert [c.der for c in chain[1:]] == [der(rollover.cert), der(old_root.cert)]


def test_search_expands_each_certificate_once(
    root: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four CAs that all certify each other: without the once-only rule the search
    # grows exponentially with depth before giving up.
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
    cas = [make_ca(f"Mesh {i}", key=keys[i]) for i in range(4)]
    mesh = [
        load(make_ca(f"Mesh {i}", cas[j], key=keys[i]))
        for i in range(4)
        for j in range(4)
        if i != j
    ]
    leaf = load(make_ek_cert(ek_key(), cas[0]))
    calls = 0
    real_signed_by = chain._signed_by

    def counting(child: Certificate, parent: Certificate) -> bool:
        nonlocal calls
        calls += 1
        return real_signed_by(child, parent)

    monkeypatch.setattr(chain, "_signed_by", counting)
    with pytest.raises(NotProven, match="does not chain"):
        verify_chain(leaf, mesh, [load(root)], NOW)
    pool = len(mesh) + 1
    assert calls <= (pool + 1) * pool


# --- CA bundles -------------------------------------------------------------------------


def test_load_ca_bundle_file_and_errors(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(SWTPM_ROOT + b"\n" + SWTPM_INTERMEDIATE)
    assert len(load_ca_bundle(bundle)) == 2
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"hello")
    with pytest.raises(MalformedInput, match=r"notes\.txt"):
        load_ca_bundle(notes)  # strict: for chains that must be whole
    with pytest.raises(SourceUnavailable, match="missing"):
        load_ca_bundle(tmp_path / "missing")


def test_public_key_of_unsupported_spki(root: Issued) -> None:
    def unknown_algorithm(fields: list[Node]) -> None:
        fields[6].children[0].value = [oid_node("1.2.3.4")]

    cert = load_certificate(resign(make_ek_cert(ek_key(), root), root, unknown_algorithm))
    with pytest.raises(MalformedInput, match="unsupported certificate public key"):
        cert.public_key()
