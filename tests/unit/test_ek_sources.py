"""Issuer and EK certificates from elsewhere than the payload: NV chain indices, AIA
answers, the manufacturers' download services, the disk cache and the options."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from server_plugin.config import build_server_config
from server_plugin.web_fetch import DiskCache
from spire_tpm_attestor.ek_download import (
    amd_ek_path,
    downloaded_ek_certificate,
    ek_certificate_url,
    intel_ek_path,
)
from spire_tpm_attestor.errors import MalformedInput
from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.x509 import load_certificate
from spire_tpm_attestor.x509.issuers import (
    MAX_ISSUER_CERTIFICATES,
    ca_issuers_urls,
    issuer_certificates,
    nv_chain_certificates,
)


def der_of(ca: TestCA) -> tuple[bytes, bytes]:
    return (
        ca.intermediate_certificate.public_bytes(Encoding.DER),
        ca.root_certificate.public_bytes(Encoding.DER),
    )


# -- NV chain indices -----------------------------------------------------------------


def test_nv_chain_index_holds_certificates_back_to_back(ek_ca: TestCA) -> None:
    intermediate, root = der_of(ek_ca)
    assert nv_chain_certificates(intermediate + root) == [intermediate, root]
    assert nv_chain_certificates(intermediate + b"\xff" * 30) == [intermediate]
    assert nv_chain_certificates(intermediate + b"\x00" * 30 + root) == [intermediate]
    assert nv_chain_certificates(b"") == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x04\x03abc", "a non-certificate element at byte 0"),
        (b"\x30\x82\x01\x00abc", "runs past the end"),
    ],
)
def test_nv_chain_index_garbage(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedInput, match=reason):
        nv_chain_certificates(data)


def test_nv_chain_index_too_many(ek_ca: TestCA) -> None:
    intermediate, _ = der_of(ek_ca)
    with pytest.raises(MalformedInput, match="more than"):
        nv_chain_certificates(intermediate * (MAX_ISSUER_CERTIFICATES + 1))


# -- AIA ------------------------------------------------------------------------------


def test_ca_issuers_urls(ek_ca: TestCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with_aia = ek_ca.issue_ek_certificate(key, ca_issuers_url="http://pki.example/ca.cer")
    assert ca_issuers_urls(load_certificate(with_aia.public_bytes(Encoding.DER))) == [
        "http://pki.example/ca.cer"
    ]
    ldap = ek_ca.issue_ek_certificate(key, ca_issuers_url="ldap://pki.example/cn=ca")
    assert ca_issuers_urls(load_certificate(ldap.public_bytes(Encoding.DER))) == []
    plain = ek_ca.issue_ek_certificate(key)
    assert ca_issuers_urls(load_certificate(plain.public_bytes(Encoding.DER))) == []
    # urlsplit raises on an unclosed IPv6 bracket; a certificate's URL is skipped instead.
    broken = ek_ca.issue_ek_certificate(key, ca_issuers_url="http://pki.example:80[/ca.cer")
    assert ca_issuers_urls(load_certificate(broken.public_bytes(Encoding.DER))) == []


@pytest.mark.parametrize("form", ["der", "pem", "pem-bundle", "pkcs7-der", "pkcs7-pem"])
def test_issuer_certificate_answer_forms(ek_ca: TestCA, form: str) -> None:
    certificates = [ek_ca.intermediate_certificate, ek_ca.root_certificate]
    body = {
        "der": certificates[0].public_bytes(Encoding.DER),
        "pem": certificates[0].public_bytes(Encoding.PEM),
        "pem-bundle": b"".join(c.public_bytes(Encoding.PEM) for c in certificates),
        "pkcs7-der": pkcs7.serialize_certificates(certificates, Encoding.DER),
        "pkcs7-pem": pkcs7.serialize_certificates(certificates, Encoding.PEM),
    }[form]
    expected = [c.public_bytes(Encoding.DER) for c in certificates]
    if form in ("der", "pem"):
        expected = expected[:1]
    # A PKCS#7 SET OF comes back in DER order, not in the order written.
    assert sorted(c.der for c in issuer_certificates(body)) == sorted(expected)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>not found</html>", "neither PEM nor a DER SEQUENCE"),
        (b"\x04\x03abc", "neither PEM nor a DER SEQUENCE"),
        (b"-----BEGIN PKCS7-----\nAAAA\n", "without its END line"),
        (b"", "neither PEM nor a DER SEQUENCE"),
    ],
)
def test_issuer_certificate_answer_garbage(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedInput, match=reason):
        issuer_certificates(body)


# -- manufacturer download services ---------------------------------------------------


def test_intel_and_amd_paths_for_an_rsa_ek() -> None:
    key = rsa.generate_private_key(65537, 2048).public_key()
    modulus = key.public_numbers().n.to_bytes(256, "big")
    # Intel: base64url(SHA-256(n || 01 00 01)), '=' percent-encoded.
    intel = base64.urlsafe_b64encode(hashlib.sha256(modulus + b"\x01\x00\x01").digest())
    assert intel_ek_path(key) == intel.decode().replace("=", "%3D")
    assert intel_ek_path(key).endswith("%3D")
    # AMD: first 16 bytes of SHA-256(00 00 22 22 || e as UINT32 || n), lowercase hex.
    amd = hashlib.sha256(bytes.fromhex("0000222200010001") + modulus).hexdigest()[:32]
    assert amd_ek_path(key) == amd
    assert (
        ek_certificate_url("amd", "https://ftpm.amd.com/pki/aia/", key)
        == f"https://ftpm.amd.com/pki/aia/{amd}"
    )
    assert ek_certificate_url("intel", "https://mirror.example/ek", key).startswith(
        "https://mirror.example/ek/"
    )


def test_intel_and_amd_paths_for_an_ecc_ek() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = key.public_numbers().x.to_bytes(32, "big") + key.public_numbers().y.to_bytes(32, "big")
    intel = base64.urlsafe_b64encode(hashlib.sha256(point).digest()).decode()
    assert intel_ek_path(key) == intel.replace("=", "%3D")
    amd = hashlib.sha256(b"\x00\x00\x44\x44" + point).hexdigest()[:32]
    assert amd_ek_path(key) == amd


def test_downloaded_certificate_forms(ek_ca: TestCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    certificate = ek_ca.issue_ek_certificate(key)
    der = certificate.public_bytes(Encoding.DER)
    unpadded = base64.urlsafe_b64encode(der).decode().rstrip("=")
    intel = json.dumps({"pubhash": "x", "certificate": unpadded}).encode()
    for body in (der, certificate.public_bytes(Encoding.PEM), intel):
        assert downloaded_ek_certificate(body).der == der


@pytest.mark.parametrize(
    "body", [b"{}", b'{"certificate": 7}', b"[1]", b'{"certificate": "@@@"}', b"{not json"]
)
def test_downloaded_json_without_a_certificate(body: bytes) -> None:
    with pytest.raises(MalformedInput):
        downloaded_ek_certificate(body)


# -- the disk cache -------------------------------------------------------------------


def test_disk_cache_writes_atomically(tmp_path: Path) -> None:
    cache = DiskCache(str(tmp_path / "cache"), "ek_aia_fetch")
    assert cache.get("a") is None
    cache.put("a", b"one")
    cache.put("a", b"two")
    assert cache.get("a") == b"two"
    assert os.listdir(tmp_path / "cache") == ["a"]  # no temporary file left behind


def test_unwritable_cache_warns_once_and_works_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should be")
    cache = DiskCache(str(blocker / "cache"), "ek_cert_download")
    with caplog.at_level(logging.WARNING):
        cache.put("a", b"one")
        cache.put("b", b"two")
        assert cache.get("a") is None
    warnings = [r for r in caplog.records if "cannot write the cache" in r.getMessage()]
    assert len(warnings) == 1
    assert "ek_cert_download" in warnings[0].getMessage()


# -- options --------------------------------------------------------------------------


def problems(text: str) -> list[str]:
    try:
        build_server_config(text, CoreConfig("example.org")).close()
    except ConfigProblems as error:
        return error.problems
    return []


CA = 'ek_ca_path = "/nonexistent/ca.pem"\n'


def test_options_are_read(ek_ca: TestCA, tmp_path: Path) -> None:
    text = f"""
ek_ca_path = "{ek_ca.bundle_path}"
ek_aia_fetch {{
  allowed_hosts = ["PKI.example.com"]
  timeout = "3s"
  max_size = 4096
  cache_path = "{tmp_path}/aia"
}}
ek_cert_download {{
  service_urls {{ amd = "https://mirror.example/amd/" }}
  negative_cache = "1m"
}}
"""
    config = build_server_config(text, CoreConfig("example.org"))
    try:
        assert config.ek_aia_fetch is not None and config.ek_cert_download is not None
        aia = config.ek_aia_fetch.fetcher.settings
        assert (aia.allowed_hosts, aia.timeout, aia.max_size) == (
            frozenset({"pki.example.com"}),
            3.0,
            4096,
        )
        download = config.ek_cert_download
        assert download.service_urls == {"amd": "https://mirror.example/amd/"}
        assert download.fetcher.settings.allowed_hosts == frozenset({"mirror.example"})
        assert download.negative_cache == 60.0
        assert download.cache is None
    finally:
        config.close()
    # Nothing was opened: no directory made, no client built.
    assert not (tmp_path / "aia").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CA + "ek_aia_fetch {\n}", "ek_aia_fetch.allowed_hosts: required"),
        (CA + 'ek_aia_fetch {\nallowed_hosts = ["a"]\nretries = 3\n}', "retries: unknown option"),
        (
            CA + 'ek_cert_download {\nservice_urls {\nibm = "https://x/"\n}\n}',
            "ek_cert_download.service_urls.ibm: unknown option",
        ),
        (
            CA + 'ek_cert_download {\nallowed_hosts = ["ekop.intel.com"]\n}',
            "service_urls.amd: 'https://ftpm.amd.com/pki/aia/' is not an http(s) URL",
        ),
        (
            CA + 'ek_cert_download {\nca_path = "/nonexistent/ca.pem"\n}',
            "ek_cert_download.ca_path:",
        ),
        (
            'hash_path = "/nonexistent"\nek_cert_download {\n}',
            "ek_cert_download needs an ek_policy that checks EK certificates",
        ),
        (CA + 'ek_aia_fetch {\nallowed_hosts = ["a"]\nmax_size = 0\n}', "max_size: 0 is outside"),
    ],
)
def test_option_problems(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in problem for problem in found), found
