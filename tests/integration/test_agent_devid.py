"""The agent's DevID: its files and options, and its TPM operations against swtpm."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

tss = pytest.importorskip("tpm2_pytss")

from agent_plugin.config import build_agent_config  # noqa: E402 - needs tpm2-pytss
from agent_plugin.devid import load_devid_key  # noqa: E402
from agent_plugin.tpm import TPMAccessError, TPMSession  # noqa: E402
from agent_plugin.tpm.session import srk_template  # noqa: E402
from spire_tpm_attestor import wire  # noqa: E402
from spire_tpm_attestor.cli.main import main as cli_main  # noqa: E402
from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig  # noqa: E402
from spire_tpm_attestor.testing.ca import TestCA  # noqa: E402
from spire_tpm_attestor.testing.swtpm import SWTPM  # noqa: E402
from spire_tpm_attestor.tpm.structures import parse_signature, parse_tpm2b_public  # noqa: E402
from spire_tpm_attestor.tpm.verify import verify_certify, verify_signature  # noqa: E402
from tests.integration.platform_setup import DevIDFiles, issue_chain  # noqa: E402
from tests.integration.plugins import hcl  # noqa: E402
from tests.integration.tpm_state import leftover_handles  # noqa: E402

pytestmark = pytest.mark.swtpm

NONCE = b"\x5a" * 32
PERSISTENT_SRK = 0x81000001


def problems_of(**options: object) -> list[str]:
    with pytest.raises(ConfigProblems) as raised:
        build_agent_config(hcl(**options), CoreConfig("example.org"))
    return raised.value.problems


# -- TPM operations ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ecc", "rsa"])
def test_devid_certify_and_signature_verify_with_the_server_code(
    swtpm: SWTPM, algorithm: str
) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        public, private = tpm.create_devid_key(algorithm)
        ak_public = tpm.create_ak("rsa")
        devid_public = tpm.load_devid(public, private)
        tpm.read_ek("rsa2048")  # three objects loaded: AK, DevID, EK
        attest, certify_signature = tpm.certify_devid(NONCE)
        agent_nonce, signature = tpm.sign_with_devid(NONCE)
    assert devid_public == public
    assert leftover_handles(swtpm.tcti) == []
    devid_area = parse_tpm2b_public(devid_public)
    verify_certify(parse_tpm2b_public(ak_public), attest, certify_signature, NONCE, devid_area)
    parsed = parse_signature(signature)
    verify_signature(devid_area, wire.devid_signed_data(NONCE, agent_nonce), parsed)


def test_each_devid_signature_has_a_fresh_agent_nonce(swtpm: SWTPM) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        tpm.load_devid(*tpm.create_devid_key("ecc"))
        nonces = {tpm.sign_with_devid(NONCE)[0] for _ in range(5)}
    assert len(nonces) == 5 and all(len(nonce) == 32 for nonce in nonces)


def test_devid_operations_need_the_keys(swtpm: SWTPM) -> None:
    with TPMSession(swtpm.tcti) as tpm:
        with pytest.raises(TPMAccessError, match="needs load_devid"):
            tpm.sign_with_devid(NONCE)
        tpm.load_devid(*tpm.create_devid_key("ecc"))
        with pytest.raises(TPMAccessError, match="needs load_devid\\(\\) and create_ak"):
            tpm.certify_devid(NONCE)
        with pytest.raises(TPMAccessError, match="malformed DevID public area"):
            tpm.load_devid(b"\x00\x05junk", b"")
    assert leftover_handles(swtpm.tcti) == []


def test_devid_key_that_is_not_this_tpms_is_refused(swtpm: SWTPM) -> None:
    with SWTPM() as other, TPMSession(other.tcti) as tpm:
        public, private = tpm.create_devid_key("ecc")
    with (
        TPMSession(swtpm.tcti) as tpm,
        pytest.raises(TPMAccessError, match="loading the DevID key"),
    ):
        tpm.load_devid(public, private)
    assert leftover_handles(swtpm.tcti) == []


def _persist_srk(tcti: str) -> None:
    esapi = tss.ESAPI(tcti)
    try:
        srk, *_ = esapi.create_primary(
            tss.TPM2B_SENSITIVE_CREATE(), srk_template(), tss.ESYS_TR.OWNER
        )
        esapi.evict_control(tss.ESYS_TR.OWNER, srk, PERSISTENT_SRK)
        esapi.flush_context(srk)
    finally:
        esapi.close()


def test_devid_under_a_persistent_parent(swtpm: SWTPM, devid_ca: TestCA, tmp_path: Path) -> None:
    _persist_srk(swtpm.tcti)
    config = tmp_path / "agent.hcl"
    config.write_text(hcl(tcti=swtpm.tcti))
    out = tmp_path / "devid"
    command = ["devid", "create", "--agent-config", str(config), "--out-dir", str(out)]
    assert cli_main([*command, "--parent-handle", hex(PERSISTENT_SRK)]) == 0
    public_key = serialization.load_pem_public_key((out / "devid.pub.pem").read_bytes())
    _, chain = issue_chain(devid_ca, public_key, out, "node-7")
    key = load_devid_key(str(chain), str(out / "devid.tss.pem"), None, None, None)
    assert key.parent_handle == PERSISTENT_SRK  # named by the TSS2 PEM file
    with TPMSession(swtpm.tcti) as tpm:
        assert tpm.load_devid(key.public, key.private, key.parent_handle) == key.public
    assert leftover_handles(swtpm.tcti) == []


# -- files and options -------------------------------------------------------------------


def test_both_key_forms_load_the_same_key(devid: DevIDFiles) -> None:
    pem = build_agent_config(hcl(**devid.agent_options("pem")), CoreConfig("example.org"))
    blobs = build_agent_config(hcl(**devid.agent_options("blobs")), CoreConfig("example.org"))
    assert pem.devid is not None and blobs.devid is not None
    assert (pem.devid.public, pem.devid.private) == (blobs.devid.public, blobs.devid.private)
    assert pem.devid.parent_handle is None
    assert len(pem.devid.certificates) == 2  # leaf, then the intermediate


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"devid_key_path": "k.pem"}, "need devid_cert_path"),
        ({"devid_cert_path": "c.pem"}, "needs devid_key_path"),
        (
            {"devid_cert_path": "c.pem", "devid_public_path": "p", "devid_key_path": "k"},
            "excludes devid_public_path",
        ),
        ({"devid_cert_path": "c.pem", "devid_public_path": "p"}, "needs devid_key_path"),
        ({"devid_cert_path": "c.pem", "devid_key_path": "/nonexistent"}, "cannot read"),
    ],
)
def test_devid_option_problems(options: dict[str, str], words: str) -> None:
    assert any(words in problem for problem in problems_of(**options)), problems_of(**options)


def test_certificate_for_another_key_is_a_configuration_problem(
    devid: DevIDFiles, devid_ca: TestCA, tmp_path: Path
) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    other = devid_ca.issue_devid_certificate(other_key, "x")
    chain = tmp_path / "other.pem"
    chain.write_bytes(devid_ca.chain_pem(other))
    options = {**devid.agent_options(), "devid_cert_path": str(chain)}
    assert any("is not for the DevID key" in p for p in problems_of(**options))


def test_key_files_that_are_not_keys_are_problems(devid: DevIDFiles, tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("-----BEGIN TSS2 PRIVATE KEY-----\nAAAA\n-----END TSS2 PRIVATE KEY-----\n")
    options = {**devid.agent_options(), "devid_key_path": str(not_pem)}
    assert any("is not a TSS2 PEM private key" in p for p in problems_of(**options))
    with_password = tmp_path / "password.pem"
    key = tss.tsskey.TSSPrivKey.from_pem((devid.directory / "devid.tss.pem").read_bytes())
    with_password.write_bytes(
        tss.tsskey.TSSPrivKey(key.private, key.public, empty_auth=False).to_pem()
    )
    options = {**devid.agent_options(), "devid_key_path": str(with_password)}
    assert any("with a password are not supported" in p for p in problems_of(**options))


def test_cli_writes_consistent_files(devid: DevIDFiles) -> None:
    public = (devid.directory / "devid.pub").read_bytes()
    spki_pem = (devid.directory / "devid.pub.pem").read_bytes()
    assert parse_tpm2b_public(public).public_key() == devid.public_key
    assert b"BEGIN PUBLIC KEY" in spki_pem
    assert (devid.directory / "devid.priv").stat().st_mode & 0o077 == 0


def _created(tcti: str, template: str) -> tuple[bytes, bytes]:
    """A DevID-shaped key from another tool's template (tpm2_create -G ... style)."""
    attributes = (
        tss.TPMA_OBJECT.FIXEDTPM
        | tss.TPMA_OBJECT.FIXEDPARENT
        | tss.TPMA_OBJECT.SENSITIVEDATAORIGIN
        | tss.TPMA_OBJECT.USERWITHAUTH
        | tss.TPMA_OBJECT.SIGN_ENCRYPT
    )
    public = tss.TPM2B_PUBLIC(publicArea=tss.TPMT_PUBLIC.parse(template, attributes))
    esapi = tss.ESAPI(tcti)
    try:
        srk, *_ = esapi.create_primary(
            tss.TPM2B_SENSITIVE_CREATE(), srk_template(), tss.ESYS_TR.OWNER
        )
        private, public, *_ = esapi.create(srk, tss.TPM2B_SENSITIVE_CREATE(), public)
        esapi.flush_context(srk)
    finally:
        esapi.close()
    return bytes(public.marshal()), bytes(private.marshal())


@pytest.mark.parametrize("template", ["ecc256:null:null", "rsa2048:null:null"])
def test_devid_without_a_pinned_scheme_signs_with_sha256(swtpm: SWTPM, template: str) -> None:
    public, private = _created(swtpm.tcti, template)
    with TPMSession(swtpm.tcti) as tpm:
        tpm.load_devid(public, private)
        agent_nonce, signature = tpm.sign_with_devid(NONCE)
    parsed = parse_signature(signature)
    assert parsed.hash_alg == 0x000B
    verify_signature(parse_tpm2b_public(public), wire.devid_signed_data(NONCE, agent_nonce), parsed)


def test_devid_pinned_to_another_hash_is_refused(swtpm: SWTPM) -> None:
    public, private = _created(swtpm.tcti, "ecc256:ecdsa-sha384:null")
    with TPMSession(swtpm.tcti) as tpm:
        tpm.load_devid(public, private)
        with pytest.raises(TPMAccessError, match="does not hash with SHA-256"):
            tpm.sign_with_devid(NONCE)
    assert leftover_handles(swtpm.tcti) == []
