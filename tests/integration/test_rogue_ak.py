"""A node whose 'AK' is not a restricted signing key is refused, though activation would work.

The agent plugin is pointed (ak_handle) at keys persisted by the test: credential
activation succeeds for any loaded key, so only the server's AK attribute check
stands between such a key and admission.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from spire_tpm_attestor.runtime.host import AttestationFailed, PluginProcess, relay_attestation
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM
from tests.integration.plugins import hcl, start_plugin

tss = pytest.importorskip("tpm2_pytss")

ROGUE_HANDLE = 0x81000042
BASE = (
    tss.TPMA_OBJECT.FIXEDTPM
    | tss.TPMA_OBJECT.FIXEDPARENT
    | tss.TPMA_OBJECT.SENSITIVEDATAORIGIN
    | tss.TPMA_OBJECT.USERWITHAUTH
    | tss.TPMA_OBJECT.SIGN_ENCRYPT
)
ROGUE_KEYS = {
    "unrestricted signing key": BASE,
    "signing key that also decrypts": BASE | tss.TPMA_OBJECT.DECRYPT,
}


def persist_key(tcti: str, attributes: int) -> None:
    """Create an RSA key with `attributes` under an SRK and make it persistent."""
    from agent_plugin.tpm.session import srk_template

    template = tss.TPM2B_PUBLIC(
        publicArea=tss.TPMT_PUBLIC(
            type=tss.TPM2_ALG.RSA,
            nameAlg=tss.TPM2_ALG.SHA256,
            objectAttributes=attributes,
            parameters=tss.TPMU_PUBLIC_PARMS(
                rsaDetail=tss.TPMS_RSA_PARMS(
                    symmetric=tss.TPMT_SYM_DEF_OBJECT(algorithm=tss.TPM2_ALG.NULL),
                    scheme=tss.TPMT_RSA_SCHEME(scheme=tss.TPM2_ALG.NULL),
                    keyBits=2048,
                    exponent=0,
                )
            ),
        )
    )
    esapi = tss.ESAPI(tcti)
    try:
        srk, *_ = esapi.create_primary(
            tss.TPM2B_SENSITIVE_CREATE(), srk_template(), tss.ESYS_TR.OWNER
        )
        private, public, *_ = esapi.create(srk, tss.TPM2B_SENSITIVE_CREATE(), template)
        key = esapi.load(srk, private, public)
        esapi.evict_control(tss.ESYS_TR.OWNER, key, ROGUE_HANDLE)
        esapi.flush_context(key)
        esapi.flush_context(srk)
    finally:
        esapi.close()


@pytest.fixture(scope="module")
def plugins() -> Iterator[tuple[PluginProcess, PluginProcess]]:
    with start_plugin("agent") as agent, start_plugin("server") as server:
        yield agent, server


@pytest.mark.swtpm
@pytest.mark.parametrize("kind", sorted(ROGUE_KEYS))
def test_key_that_is_not_a_restricted_signing_key_is_refused_as_ak(
    plugins: tuple[PluginProcess, PluginProcess], swtpm: SWTPM, ek_ca: TestCA, kind: str
) -> None:
    agent, server = plugins
    persist_key(swtpm.tcti, ROGUE_KEYS[kind])
    agent.configure(hcl(tcti=swtpm.tcti, ak_handle=hex(ROGUE_HANDLE)))
    server.configure(hcl(ek_ca_path=str(ek_ca.bundle_path)))
    with pytest.raises(AttestationFailed) as failure:
        relay_attestation(agent, server)
    assert failure.value.code == grpc.StatusCode.PERMISSION_DENIED
    # The TPM cannot make a restricted key that both signs and decrypts, so both
    # rogue keys fail on the first attribute checked.
    assert "AK rejected: AK public area: RESTRICTED is not set" in failure.value.details
