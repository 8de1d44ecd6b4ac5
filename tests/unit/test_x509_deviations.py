"""Certificates as manufacturers ship them: every deviation class parses and verifies,
in EK and in CA certificates, and the same certificate altered anywhere never does."""

from __future__ import annotations

import datetime
import itertools

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spire_tpm_attestor.ek_hash import ek_hash, hash_of_certificate
from spire_tpm_attestor.errors import AttestorError, MalformedInput, NotProven
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.x509 import (
    Certificate,
    Expired,
    ca_certificates_in,
    load_certificate,
    verify_chain,
)
from spire_tpm_attestor.x509.der import canonical_certificate
from tests.unit.x509_builders import (
    CA_DEVIATIONS,
    EK_DEVIATIONS,
    Deviation,
    Node,
    add_extension,
    der,
    encode,
    make_ca,
    make_ek_cert,
    parse,
    resign,
)

NOW = datetime.datetime.now(datetime.UTC)
# Deviations around the DER rather than in it.
WRAPPINGS = (
    "tcg-nv-header",
    "tcg-stored-certificate",
    "nv-padding",
    "trailing-bytes",
    "pem-surrounding-text",
)
RSA_EK = rsa.generate_private_key(65537, 2048).public_key()
EC_EK = ec.generate_private_key(ec.SECP256R1()).public_key()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("deviations"))


def root_of(ca: TestCA) -> Certificate:
    return load_certificate(ca.root_path.read_bytes())


def clean_ek(ca: TestCA, deviation: Deviation) -> bytes:
    return der(ca.issue_ek_certificate(RSA_EK if deviation.rsa_key else EC_EK))


def chain_to_root(cert: Certificate, ca: TestCA) -> list[Certificate]:
    intermediate = load_certificate(der(ca.intermediate_certificate))
    return verify_chain(cert, [intermediate], [root_of(ca)], NOW)


def refused(data: bytes, intermediates: list[bytes], bundle: list[Certificate]) -> str:
    """Why `data` does not verify: it cannot be read, or it does not chain."""
    try:
        cert = load_certificate(data)
        verify_chain(cert, [load_certificate(i) for i in intermediates], bundle, NOW)
    except (MalformedInput, NotProven) as exc:
        return str(exc)
    raise AssertionError("the altered certificate verified")


@pytest.mark.parametrize("deviation", EK_DEVIATIONS, ids=lambda d: d.label)
def test_ek_certificate_deviation_parses_and_verifies(ca: TestCA, deviation: Deviation) -> None:
    clean = clean_ek(ca, deviation)
    deviant, _ = deviation.make(clean, ca.intermediate)
    cert = load_certificate(deviant)
    assert deviation.quirk in cert.quirks
    assert chain_to_root(cert, ca)[-1].der == der(ca.root_certificate)
    # Read through the deviation: the EK hash, and the TCG fields the selectors carry.
    assert hash_of_certificate(deviant) == ek_hash(RSA_EK if deviation.rsa_key else EC_EK)
    assert (cert.tcg_manufacturer, cert.tcg_model) == ("id:53575450", "swtpm")
    # What the signature was checked over is the original TBS, byte for byte.
    assert cert.tbs_bytes in deviant or deviation.quirk == "pem-surrounding-text"
    assert cert.spki in cert.tbs_bytes


@pytest.mark.parametrize("deviation", EK_DEVIATIONS, ids=lambda d: d.label)
def test_ek_certificate_altered_inside_the_deviation_does_not_verify(
    ca: TestCA, deviation: Deviation
) -> None:
    forged = deviation.forge(clean_ek(ca, deviation), ca.intermediate)
    refused(forged, [der(ca.intermediate_certificate)], [root_of(ca)])


@pytest.mark.parametrize("deviation", CA_DEVIATIONS, ids=lambda d: d.label)
def test_ca_certificate_deviation_parses_and_verifies(ca: TestCA, deviation: Deviation) -> None:
    """The intermediate carries the deviation: sent by the agent, or trusted as an anchor."""
    deviant, _ = deviation.make(der(ca.intermediate_certificate), ca.root)
    intermediate = load_certificate(deviant)
    assert deviation.quirk in intermediate.quirks
    leaf = load_certificate(clean_ek(ca, deviation))
    assert verify_chain(leaf, [intermediate], [root_of(ca)], NOW)[-1].der == ca.root.der
    usable, unusable = ca_certificates_in(deviant)
    assert (len(usable), unusable) == (1, [])
    assert verify_chain(leaf, [], usable, NOW)[-1].der == deviant
    forged = deviation.forge(der(ca.intermediate_certificate), ca.root)
    refused(leaf.der, [forged], [root_of(ca)])


@pytest.mark.parametrize(
    "deviation", [d for d in EK_DEVIATIONS if d.label not in WRAPPINGS], ids=lambda d: d.label
)
def test_the_canonical_twin_of_a_deviant_certificate_does_not_verify(
    ca: TestCA, deviation: Deviation
) -> None:
    """The re-encoding fields are read from, given the original signature: were any
    signature checked over re-encoded bytes, this forgery would pass."""
    deviant, _ = deviation.make(clean_ek(ca, deviation), ca.intermediate)
    twin, _ = canonical_certificate(deviant)
    if twin == deviant:
        pytest.skip("cryptography reads it as is; the deviation is in a value, not the DER")
    refused(twin, [der(ca.intermediate_certificate)], [root_of(ca)])


@pytest.mark.parametrize(
    "label", ["san-unsorted-set", "basic-constraints-ca-false", "ecdsa-null-parameters"]
)
def test_no_byte_of_a_deviant_certificate_can_change(ca: TestCA, label: str) -> None:
    """Every single-byte alteration is refused or fails its signature, and none raises
    anything but the core's errors (no library exception, whatever the bytes)."""
    deviation = next(d for d in EK_DEVIATIONS if d.label == label)
    deviant, _ = deviation.make(clean_ek(ca, deviation), ca.intermediate)
    bundle = [root_of(ca)]
    intermediate = [der(ca.intermediate_certificate)]
    for at, flip in itertools.product(range(len(deviant)), (0x01, 0x80)):
        altered = deviant[:at] + bytes([deviant[at] ^ flip]) + deviant[at + 1 :]
        try:
            refused(altered, intermediate, bundle)
        except AssertionError:
            raise AssertionError(f"byte {at} ^ {flip:#x} still verifies") from None


def test_a_clean_certificate_has_no_quirks(ca: TestCA) -> None:
    cert = load_certificate(der(ca.issue_ek_certificate(EC_EK)))
    assert cert.quirks == () and not cert.lenient


def test_fields_read_through_deviations(ca: TestCA) -> None:
    by_label = {d.label: d for d in EK_DEVIATIONS}
    issuer = ca.intermediate
    negative, _ = by_label["negative-serial"].make(
        clean_ek(ca, by_label["negative-serial"]), issuer
    )
    cert = load_certificate(negative)
    assert cert.serial_number == int.from_bytes(bytes.fromhex("8f1e2d3c4b5a"), "big", signed=True)
    ca_false, _ = by_label["basic-constraints-ca-false"].make(
        clean_ek(ca, by_label["nv-padding"]), issuer
    )
    assert not load_certificate(ca_false).is_ca
    forged_ca = by_label["basic-constraints-ca-false"].forge(
        clean_ek(ca, by_label["nv-padding"]), issuer
    )
    assert load_certificate(forged_ca).is_ca  # 01 is TRUE: why the signature must fail
    edi, _ = by_label["san-edi-party-name"].make(clean_ek(ca, by_label["nv-padding"]), issuer)
    assert load_certificate(edi).tcg_version == "id:20191023"


def test_unknown_critical_extension_is_refused_naming_it(ca: TestCA) -> None:
    issuer = ca.intermediate

    def unknown_critical(fields: list[Node]) -> None:
        add_extension(fields, "1.3.6.1.4.1.99999.1", Node(0x05, b""), critical=True)

    cert = load_certificate(resign(ca.issue_ek_certificate(EC_EK), issuer, unknown_critical))
    with pytest.raises(NotProven, match=r"unknown critical extension 1\.3\.6\.1\.4\.1\.99999\.1"):
        chain_to_root(cert, ca)

    def unknown_noncritical(fields: list[Node]) -> None:
        add_extension(fields, "1.3.6.1.4.1.99999.1", Node(0x05, b""))

    cert = load_certificate(resign(ca.issue_ek_certificate(EC_EK), issuer, unknown_noncritical))
    chain_to_root(cert, ca)


def test_expiry_is_enforced_unless_ignored(ca: TestCA) -> None:
    cert = load_certificate(der(ca.issue_ek_certificate(EC_EK)))
    later = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)  # after the CAs
    intermediate = [load_certificate(der(ca.intermediate_certificate))]
    with pytest.raises(Expired, match="has expired"):
        verify_chain(cert, intermediate, [root_of(ca)], later)
    verify_chain(cert, intermediate, [root_of(ca)], later, enforce_expiry=False)
    before = NOW - datetime.timedelta(days=30)  # notBefore is enforced either way
    with pytest.raises(NotProven, match="not yet valid"):
        verify_chain(cert, intermediate, [root_of(ca)], before, enforce_expiry=False)


def test_tcg_nv_forms(ca: TestCA) -> None:
    clean = der(ca.issue_ek_certificate(EC_EK))
    size = len(clean).to_bytes(2, "big")
    # The stored-certificate size counting the full-certificate tag, or not.
    for data in (
        b"\x10\x01\x00" + (len(clean) + 2).to_bytes(2, "big") + b"\x10\x02" + clean,
        b"\x10\x01\x00" + size + b"\x10\x02" + clean + b"\xff" * 9,
    ):
        assert load_certificate(data).der == clean
    with pytest.raises(MalformedInput, match="type 1"):
        load_certificate(b"\x10\x01\x01" + size + clean)
    with pytest.raises(MalformedInput, match="longer than the size"):
        load_certificate(b"\x10\x01\x00" + (len(clean) - 1).to_bytes(2, "big") + clean)


def test_unreadable_certificates_raise_only_the_core_errors(ca: TestCA) -> None:
    clean = der(ca.issue_ek_certificate(EC_EK))
    for size in (1, 2, 10, 100, len(clean) - 1):
        with pytest.raises(AttestorError):
            load_certificate(clean[:size])
    tree = parse(clean)
    tree.children[0].children[0] = Node(0xA0, [Node(0x04, b"x")])  # version not an INTEGER
    with pytest.raises(MalformedInput):
        load_certificate(encode(tree))


def test_premise_cryptography_refuses_what_is_tolerated(ca: TestCA) -> None:
    """Each DER-level deviation is one `cryptography` itself refuses (or warns about)."""
    for deviation in EK_DEVIATIONS:
        if deviation.label in ("long-serial", "rsaes-oaep-key", "negative-serial", *WRAPPINGS):
            continue
        deviant, _ = deviation.make(clean_ek(ca, deviation), ca.intermediate)
        with pytest.raises((ValueError, x509.InvalidVersion, x509.UnsupportedGeneralNameType)):
            loaded = x509.load_der_x509_certificate(deviant)
            loaded.extensions  # noqa: B018


def test_a_certificate_with_an_enormous_serial_is_described_in_hex() -> None:
    """A serial of over 4,300 decimal digits made describe() raise Python's ValueError
    (int to str), INTERNAL wherever a message names the certificate (found by
    tests/fuzz): an EK certificate without a subject is named by its serial in hex."""
    ca = make_ca("fuzz CA")
    clean = der(make_ek_cert(ec.generate_private_key(ec.SECP256R1()).public_key(), ca))

    def enormous_serial(fields: list[Node]) -> None:
        fields[1].value = b"\x01" + bytes(2000)  # [0] version, then the serial

    certificate = load_certificate(resign(clean, ca, enormous_serial))
    assert certificate.describe().startswith("'serial 0x1" + "0" * 4000)
    usable, problems = ca_certificates_in(certificate.der)
    assert not usable and problems[0].startswith("'serial 0x1") and "is not a CA" in problems[0]
