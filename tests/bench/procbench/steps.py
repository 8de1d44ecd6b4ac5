"""The attestation steps alone, in this process, on the very payloads the driver sends.

The process figure minus this one is what the gRPC server, the threads and the stream
plumbing cost; `--profile` prints both.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from server_plugin import attestation
from server_plugin.config import build_server_config
from spire_tpm_attestor import wire
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.runtime.config import CoreConfig


def cpu_per_attestation(config: dict[str, Any], trust_domain: str, count: int) -> float:
    """Thread CPU seconds per attestation (payload -> challenge -> answer -> attributes),
    after `count // 10` warm-up ones; the answer carries the server's own secret."""
    server = build_server_config(config["hcl"], CoreConfig(trust_domain))
    payloads = [base64.b64decode(node["payload"]) for node in config["nodes"]]
    try:
        warmup = count // 10
        for number in range(warmup + count):
            if number == warmup:
                started = time.thread_time()
            payload = payloads[number % len(payloads)]
            evidence = attestation.check_payload(server, attestation.decode_payload(payload))
            _challenge, pending = attestation.issue_challenge(server, evidence)
            answer = attestation_pb2.ChallengeResponse(
                version=wire.PROTOCOL_VERSION, secret=pending.secret
            ).SerializeToString()
            attested = attestation.verify_response(
                server, pending, attestation.decode_response(answer)
            )
            attestation.agent_attributes(server, attested)
        return (time.thread_time() - started) / count
    finally:
        server.close()
