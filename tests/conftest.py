"""Shared fixtures: a throw-away EK CA and fresh swtpm simulators."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from cryptography import x509

from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM, provision_ek_certificates


@pytest.fixture(scope="session")
def ek_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """Root + intermediate CA issuing TCG-style EK certificates (PEM files in a tmp dir)."""
    return TestCA.create(tmp_path_factory.mktemp("ek-ca"))


@pytest.fixture
def bare_swtpm() -> Iterator[SWTPM]:
    """A freshly manufactured swtpm with no EK certificates in NV."""
    pytest.importorskip("tpm2_pytss")
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm is not installed")
    with SWTPM() as simulator:
        yield simulator


@pytest.fixture
def swtpm(bare_swtpm: SWTPM, ek_ca: TestCA) -> SWTPM:
    """A fresh swtpm with RSA 2048 (L-1), P-256 (L-2) and P-384 (H-3) EK certificates."""
    provision_ek_certificates(bare_swtpm.tcti, ek_ca)
    return bare_swtpm


@pytest.fixture
def ek_certificate(bare_swtpm: SWTPM, ek_ca: TestCA) -> x509.Certificate:
    """A fresh swtpm with only an RSA 2048 (L-1) EK certificate, which this returns."""
    certificate: x509.Certificate = provision_ek_certificates(
        bare_swtpm.tcti, ek_ca, algorithms=("rsa2048",)
    )["rsa2048"]
    return certificate
