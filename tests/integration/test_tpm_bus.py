"""Encrypted TPM sessions: what an interposer on the TPM bus sees during an attestation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from spire_tpm_attestor import wire
from spire_tpm_attestor.runtime.host import PluginProcess
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.integration.bus_tap import BusTap
from tests.integration.platform_setup import intercept, provision_devid
from tests.integration.plugins import hcl

pytestmark = pytest.mark.swtpm


def test_interposer_learns_no_secret_and_no_proof(
    agent: PluginProcess, server: PluginProcess, swtpm: SWTPM, ek_ca: TestCA, tmp_path: Path
) -> None:
    devid_ca = TestCA.create(tmp_path / "devid-ca", name="Test DevID")
    devid = provision_devid(swtpm.tcti, devid_ca, tmp_path / "devid")
    server.configure(
        hcl(
            ek_ca_path=str(ek_ca.bundle_path),
            devid_ca_path=str(devid_ca.root_path),
            pcr_selection={"sha256": [0, 7]},
        )
    )
    with BusTap(swtpm) as tap:
        agent.configure(hcl(tcti=tap.tcti, **devid.agent_options()))
        exchange = intercept(agent, server)
        traffic = tap.traffic
    assert exchange.challenge and exchange.response and exchange.attributes
    challenge, response = exchange.challenge, exchange.response
    # The tap does see the bus: public areas travel in the clear.
    assert exchange.payload.ak_public[2:] in traffic
    hidden = {
        "activated secret": response.secret,
        "server nonce": challenge.nonce,
        "quote": response.quote,
        "DevID certification": response.devid_certify,
        "digest the DevID signs": hashlib.sha256(
            wire.devid_signed_data(challenge.nonce, response.agent_nonce)
        ).digest(),
    }
    for what, value in hidden.items():
        assert value not in traffic, f"the {what} crossed the TPM bus in the clear"


def test_tpm_without_aes_falls_back_to_clear_sessions_only_when_allowed(
    swtpm: SWTPM, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The negative of the test above: without parameter encryption the tap sees the secret.
    from agent_plugin.tpm import TPMSession
    from spire_tpm_attestor.tpm.credential import make_credential
    from spire_tpm_attestor.tpm.structures import parse_tpm2b_public

    monkeypatch.setattr(TPMSession, "_supports_aes_cfb", lambda self: False)
    secret = bytes(range(32))
    with BusTap(swtpm) as tap, TPMSession(tap.tcti, require_encryption=False) as tpm:
        ak_public = tpm.create_ak("ecc")
        ek = tpm.read_ek("rsa2048")
        blob, seed = make_credential(
            parse_tpm2b_public(ek.public), parse_tpm2b_public(ak_public).name(), secret
        )
        assert tpm.activate_credential(blob, seed) == secret
        assert secret in tap.traffic
    assert "without encryption" in caplog.text


def test_tpm_without_aes_is_refused_by_default(
    swtpm: SWTPM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interposer could fake the capability answer: the agent must not quietly comply.
    from agent_plugin.tpm import TPMAccessError, TPMSession

    monkeypatch.setattr(TPMSession, "_supports_aes_cfb", lambda self: False)
    with TPMSession(swtpm.tcti) as tpm:
        tpm.read_ek("rsa2048")
        tpm.create_ak("ecc")
        with pytest.raises(TPMAccessError, match="allow_unencrypted_sessions = true"):
            tpm.activate_credential(b"\x00\x02ab", b"\x00\x02cd")
