"""`make demo`: one full node attestation on a simulated TPM, from nothing.

Starts swtpm with a fresh state, makes a test EK CA, writes an EK certificate into
the TPM's NV, loads both plugin executables the way SPIRE does, relays one
attestation (with PCRs 0 and 7 quoted), prints the SPIFFE ID and selectors, and cleans
everything up.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from spire_tpm_attestor.cli.main import print_result
from spire_tpm_attestor.ek_hash import ek_hash
from spire_tpm_attestor.runtime.host import (
    AGENT_HOST_SERVICES,
    SERVER_HOST_SERVICES,
    PluginProcess,
    relay_attestation,
)
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.testing.swtpm import SWTPM, provision_ek_certificates

TRUST_DOMAIN = "example.org"


def executable(side: str) -> list[str]:
    return [str(Path(sys.executable).parent / f"spire-tpm-attestor-{side}")]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="spire-tpm-demo-") as workdir, SWTPM() as tpm:
        work = Path(workdir)
        ca = TestCA.create(work / "ek-ca")
        certificates = provision_ek_certificates(tpm.tcti, ca, algorithms=("rsa2048",))
        pub_hash = ek_hash(certificates["rsa2048"].public_key())
        hashes = work / "hashes"
        hashes.mkdir()
        (hashes / pub_hash).write_text(json.dumps({"name": "demo-node", "labels": {"env": "demo"}}))
        print(f"swtpm running at {tpm.tcti}; EK certificate issued by a fresh test CA")
        print(f"EK hash {pub_hash} added to the allowlist {hashes}")

        agent_hcl = f'tcti = "{tpm.tcti}"\n'
        server_hcl = (
            f'ek_policy = "cert_and_allowlist"\n'
            f'ek_ca_path = "{ca.bundle_path}"\n'
            f'hash_path = "{hashes}"\n'
            "pcr_selection {\n  sha256 = [0, 7]\n}\n"
        )
        with (
            PluginProcess.start(
                executable("server"), host_service_names=SERVER_HOST_SERVICES
            ) as server,
            PluginProcess.start(
                executable("agent"), host_service_names=AGENT_HOST_SERVICES
            ) as agent,
        ):
            for name, plugin in (("server", server), ("agent", agent)):
                print(
                    f"{name} plugin: handshake {plugin.handshake.raw.strip()!r}, "
                    f"serves {', '.join(plugin.plugin_service_names)}"
                )
            server.configure(server_hcl, TRUST_DOMAIN)
            agent.configure(agent_hcl, TRUST_DOMAIN)
            started = time.monotonic()
            result = relay_attestation(agent, server)
            elapsed = time.monotonic() - started
        print(f"\nattested in {elapsed * 1000:.0f} ms")
        print_result(result, selector_type="tpm:")
    return 0


if __name__ == "__main__":
    sys.exit(main())
