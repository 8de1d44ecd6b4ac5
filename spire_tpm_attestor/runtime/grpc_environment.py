"""What the plugin process asks of grpcio through its environment, before importing it.

grpcio reads `GRPC_EXPERIMENTS` once, when it is imported, so `choose_grpc_experiments`
must run before anything imports grpc (the plugins' `main` calls it first).

The one choice: the server's listener without EventEngine (`-event_engine_listener`).
With EventEngine, bytes read on the plugin's socket are handled on EventEngine's own
threads and each completed operation is handed to the completion-queue thread and then
to the event loop; with the polled listener the completion-queue thread reads the socket
itself, one hand-off fewer per operation. An attestation is seven operations (the call,
two reads, two writes, the status, the close): measured with `make bench-process`, the
process spends 10-15% less CPU per attestation (README, "The runtime").
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

POLLED_LISTENER = "-event_engine_listener"


def choose_grpc_experiments(environ: MutableMapping[str, str] = os.environ) -> None:
    """Add POLLED_LISTENER to GRPC_EXPERIMENTS, unless the operator's own value already
    says something about that experiment."""
    chosen = environ.get("GRPC_EXPERIMENTS", "")
    if "event_engine_listener" in chosen:
        return
    environ["GRPC_EXPERIMENTS"] = f"{chosen},{POLLED_LISTENER}" if chosen else POLLED_LISTENER
