"""The benchmark's grpcio-free do-nothing plugin (tests/bench/procbench/noop_h2_plugin.py)
speaks enough gRPC for a second client: loaded through runtime.host (grpcio's C core,
not the Go driver), it answers Init, Configure, Health, Attest and Shutdown and refuses
an unknown method. `h2` comes with the dev extras (`make install`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
import pytest

from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2 as server_pb2
from spire_tpm_attestor.runtime.host import SERVER_HOST_SERVICES, SERVER_SERVICE, PluginProcess

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "bench" / "procbench" / "noop_h2_plugin.py"


@pytest.mark.parametrize("flags", [[], ["--early-handshake"]], ids=["late", "early"])
def test_h2_probe_serves_the_do_nothing_flow(flags: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with PluginProcess.start(
        [sys.executable, str(SCRIPT), *flags], env=env, host_service_names=SERVER_HOST_SERVICES
    ) as plugin:
        assert SERVER_SERVICE in plugin.plugin_service_names
        plugin.configure("", trust_domain="example.org")
        check = plugin.channel.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"\n\x06plugin", timeout=5) == b"\x08\x01"  # SERVING
        requests = iter(
            [
                server_pb2.AttestRequest(payload=b"payload"),
                server_pb2.AttestRequest(challenge_response=b"answer"),
            ]
        )
        responses = list(plugin.server_stub().Attest(requests, timeout=5))
        assert responses[0].challenge == bytes(300)
        attributes = responses[1].agent_attributes
        assert attributes.spiffe_id == "spiffe://example.org/spire/agent/noop/node"
        unknown = plugin.channel.unary_unary("/no.such.Service/Method")
        with pytest.raises(grpc.RpcError) as refused:
            unknown(b"", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert plugin.stdout_after_handshake == []
        assert plugin.stop() < 2  # Shutdown ends the process
