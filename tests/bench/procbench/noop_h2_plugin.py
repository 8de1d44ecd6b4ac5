"""A do-nothing server NodeAttestor that speaks gRPC itself: asyncio + `h2`, no grpcio.

A probe, not a runtime: what would the floor under the server plugin be if the process
did not import grpcio at all? It serves exactly what the do-nothing flow needs, the way
noop_plugin.py does on the project's grpc.aio runtime: the go-plugin handshake line, gRPC
over HTTP/2 with prior knowledge on a unix socket in a private directory, go-plugin's
broker, stdio, controller and health services, SPIRE's Init and Config, and an `Attest`
that reads the payload, sends a fixed 300-byte challenge, reads the answer and admits the
node with one selector. Messages are the project's generated protobuf classes (the
`_pb2` modules import protobuf only, not grpcio); HTTP/2 framing, HPACK and flow control
are the pure-Python `h2` library (`pip install h2`).

Left out, because the do-nothing flow does not need them: logging, HCL parsing, deadlines
(`grpc-timeout` is ignored), compression (a compressed message is refused), message size
limits beyond h2's, and every check a product runtime would make. See README, "The
runtime: grpc.aio, and what is left per attestation".

`--early-handshake` binds the socket and prints the handshake line before importing
asyncio, h2 and protobuf (host connections wait in the listen backlog meanwhile): how
much of exec -> handshake is imports a runtime could do after it.

`--price N` instead times N do-nothing attestations through two in-memory h2 connections
(a client and this server), no sockets: the pure-Python framing per attestation.
"""

from __future__ import annotations

import os
import socket
import sys


def private_directory() -> str:
    """A new 0700 directory for the socket, as the runtime makes one."""
    parent = os.environ.get("TMPDIR") or "/tmp"
    path = os.path.join(parent, f"spire-tpm-h2-{os.urandom(6).hex()}")
    os.mkdir(path, 0o700)
    return path


def listen_and_announce() -> tuple[socket.socket, str]:
    """Bind and listen on the plugin socket, then print go-plugin's handshake line."""
    socket_path = os.path.join(private_directory(), "plugin.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(128)
    sys.stdout.write(f"1|1|unix|{socket_path}|grpc\n")
    sys.stdout.flush()
    sys.stdout = sys.stderr  # nothing else reaches the host's pipe
    return listener, socket_path


if __name__ == "__main__" and "--early-handshake" in sys.argv[1:]:
    EARLY = listen_and_announce()

import asyncio  # noqa: E402 - after the early handshake
import signal  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402

from spire_tpm_attestor.pb import spire_config_pb2 as config_pb2  # noqa: E402
from spire_tpm_attestor.pb import spire_init_pb2 as init_pb2  # noqa: E402
from spire_tpm_attestor.pb import spire_server_nodeattestor_pb2 as server_pb2  # noqa: E402

SERVICE_NAME = "spire.plugin.server.nodeattestor.v1.NodeAttestor"
CONFIG_SERVICE = "spire.service.common.config.v1.Config"
CHALLENGE = bytes(300)
RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
HEALTH_SERVING = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse{status: SERVING}
OK, UNIMPLEMENTED, INTERNAL = 0, 12, 13
ATTEST = f"/{SERVICE_NAME}/Attest"
BROKER = "/plugin.GRPCBroker/StartStream"
STDIO = "/plugin.GRPCStdio/StreamStdio"
SHUTDOWN = "/plugin.GRPCController/Shutdown"


class Plugin:
    """The do-nothing plugin's state, shared by every connection."""

    def __init__(self) -> None:
        self.trust_domain = ""
        self.shutdown = asyncio.Event()

    def init(self, request: bytes) -> bytes:
        init_pb2.InitRequest.FromString(request)
        response = init_pb2.InitResponse(plugin_service_names=[SERVICE_NAME, CONFIG_SERVICE])
        return response.SerializeToString()

    def configure(self, request: bytes) -> bytes:
        parsed = config_pb2.ConfigureRequest.FromString(request)
        self.trust_domain = parsed.core_configuration.trust_domain
        return b""

    def unary(self, path: str) -> Callable[[bytes], bytes] | None:
        return {
            "/spire.service.private.init.v1.Init/Init": self.init,
            "/spire.service.private.init.v1.Init/Deinit": lambda request: b"",
            f"/{CONFIG_SERVICE}/Configure": self.configure,
            "/grpc.health.v1.Health/Check": lambda request: HEALTH_SERVING,
            SHUTDOWN: lambda request: b"",
        }.get(path)


class Stream:
    __slots__ = (
        "buffer", "closed", "headers_sent", "messages", "path", "pending", "request", "trailers",
    )  # fmt: skip

    def __init__(self, path: str) -> None:
        self.path = path
        self.buffer = bytearray()  # DATA not yet split into gRPC messages
        self.messages = 0  # how many the peer has sent
        self.request = b""  # a unary call's message, answered when the host ends its side
        self.headers_sent = False
        self.pending = bytearray()  # our DATA waiting for flow-control window
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.closed = False  # our side has ended (trailers queued or sent)


class Connection(asyncio.Protocol):
    """One HTTP/2 connection from the host: gRPC calls are its streams."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.streams: dict[int, Stream] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()  # h2 has queued a GOAWAY
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self.handle(event)
        self.flush()

    def handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers or [])
            self.streams[event.stream_id] = Stream(headers.get(b":path", b"").decode())
        elif isinstance(event, h2.events.DataReceived):
            # Give the window back at once: the do-nothing flow buffers nothing large.
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.closed:
                stream.buffer += event.data or b""
                self.read_messages(event.stream_id, stream)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.closed:
                self.half_closed(event.stream_id, stream)
        elif isinstance(event, h2.events.StreamReset):
            self.streams.pop(event.stream_id, None)
        elif isinstance(event, h2.events.WindowUpdated):
            ids = list(self.streams) if event.stream_id == 0 else [event.stream_id]
            for stream_id in ids:
                if stream_id in self.streams:
                    self.send_pending(stream_id, self.streams[stream_id])
        elif isinstance(event, h2.events.ConnectionTerminated) and self.transport is not None:
            self.transport.close()

    def read_messages(self, stream_id: int, stream: Stream) -> None:
        buffer = stream.buffer
        while len(buffer) >= 5 and not stream.closed:
            size = int.from_bytes(buffer[1:5], "big")
            if len(buffer) < 5 + size:
                return
            compressed, message = buffer[0], bytes(buffer[5 : 5 + size])
            del buffer[: 5 + size]
            stream.messages += 1
            if compressed:
                self.finish(stream_id, stream, UNIMPLEMENTED, "compressed messages")
            else:
                self.message(stream_id, stream, message)

    def message(self, stream_id: int, stream: Stream, message: bytes) -> None:
        """One gRPC message from the host on a streaming call."""
        if stream.path == ATTEST:
            server_pb2.AttestRequest.FromString(message)
            if stream.messages == 1:
                self.send(stream_id, stream, server_pb2.AttestResponse(challenge=CHALLENGE))
            else:
                attributes = server_pb2.AgentAttributes(
                    spiffe_id=f"spiffe://{self.plugin.trust_domain}/spire/agent/noop/node",
                    selector_values=["noop:1"],
                )
                self.send(stream_id, stream, server_pb2.AttestResponse(agent_attributes=attributes))
                self.finish(stream_id, stream, OK)
        else:  # the broker's ConnInfo and stdio's Empty need no answer
            stream.request = message

    def half_closed(self, stream_id: int, stream: Stream) -> None:
        """The host has sent its last message on this call."""
        if stream.path in (ATTEST, BROKER):
            self.finish(stream_id, stream, OK)  # the host gave up, or is unloading us
            return
        if stream.path == STDIO:
            return  # held open for the life of the connection; nothing to relay
        handler = self.plugin.unary(stream.path)
        if handler is None:
            self.finish(stream_id, stream, UNIMPLEMENTED, f"unknown method {stream.path}")
            return
        if stream.messages != 1 or stream.buffer:  # a unary call carries one message
            self.finish(stream_id, stream, INTERNAL, "a unary call needs exactly one message")
            return
        self.send_bytes(stream_id, stream, handler(stream.request))
        self.finish(stream_id, stream, OK)
        if stream.path == SHUTDOWN:
            self.plugin.shutdown.set()

    def send(self, stream_id: int, stream: Stream, message: Any) -> None:
        self.send_bytes(stream_id, stream, message.SerializeToString())

    def send_bytes(self, stream_id: int, stream: Stream, payload: bytes) -> None:
        if not stream.headers_sent:
            self.h2.send_headers(stream_id, RESPONSE_HEADERS)
            stream.headers_sent = True
        stream.pending += b"\x00" + len(payload).to_bytes(4, "big") + payload
        self.send_pending(stream_id, stream)

    def finish(self, stream_id: int, stream: Stream, code: int, text: str = "") -> None:
        trailers = [(b"grpc-status", str(code).encode())]
        if text:  # grpc-message is percent-encoded; these texts are plain ASCII
            trailers.append((b"grpc-message", text.replace("%", "%25").encode()))
        stream.closed = True
        if not stream.headers_sent:  # trailers-only response
            self.h2.send_headers(stream_id, RESPONSE_HEADERS + trailers, end_stream=True)
            self.streams.pop(stream_id, None)
            return
        stream.trailers = trailers
        self.send_pending(stream_id, stream)

    def send_pending(self, stream_id: int, stream: Stream) -> None:
        while stream.pending:
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                return  # WindowUpdated sends the rest
            self.h2.send_data(stream_id, bytes(stream.pending[:window]))
            del stream.pending[:window]
        if stream.trailers is not None:
            self.h2.send_headers(stream_id, stream.trailers, end_stream=True)
            self.streams.pop(stream_id, None)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)


async def serve(early: tuple[socket.socket, str] | None) -> None:
    loop = asyncio.get_running_loop()
    plugin = Plugin()
    loop.add_signal_handler(signal.SIGTERM, plugin.shutdown.set)
    listener, socket_path = early or listen_and_announce()
    server = await loop.create_unix_server(lambda: Connection(plugin), sock=listener)
    await plugin.shutdown.wait()
    await asyncio.sleep(0)  # let Shutdown's answer reach the socket
    server.close()
    os.unlink(socket_path)
    os.rmdir(os.path.dirname(socket_path))
    os._exit(0)


class Pipe(asyncio.Transport):
    """An in-memory transport: what the server writes, the client reads."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


def price(attestations: int) -> None:
    """CPU per do-nothing attestation through the server's h2 framing and a client's,
    in memory: what pure-Python HTTP/2 costs, without sockets or an event loop."""
    import time

    plugin = Plugin.__new__(Plugin)
    plugin.trust_domain = "example.org"
    server, pipe = Connection(plugin), Pipe()
    server.connection_made(pipe)
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    request_headers = [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", ATTEST.encode()),
        (b":authority", b"localhost"), (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]  # fmt: skip
    payload = server_pb2.AttestRequest(payload=bytes(1200)).SerializeToString()
    answer = server_pb2.AttestRequest(challenge_response=bytes(100)).SerializeToString()

    def frame(message: bytes) -> bytes:
        return b"\x00" + len(message).to_bytes(4, "big") + message

    server_seconds = 0.0

    def exchange() -> list[h2.events.Event]:
        nonlocal server_seconds
        data = client.data_to_send()
        began = time.process_time()
        server.data_received(data)
        server_seconds += time.process_time() - began
        events = client.receive_data(pipe.take())
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        return events

    exchange()
    server_seconds = 0.0
    began = time.process_time()
    for _ in range(attestations):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, request_headers)
        client.send_data(stream_id, frame(payload))
        exchange()
        client.send_data(stream_id, frame(answer))
        events = exchange()
        if not any(isinstance(e, h2.events.StreamEnded) for e in events):
            raise SystemExit(f"the attestation did not end: {events}")
        client.end_stream(stream_id)
        exchange()
    spent = time.process_time() - began
    print(
        f"do-nothing attestation through h2 in memory: {1000 * server_seconds / attestations:.3f}"
        f" ms CPU/attestation on the server side (framing, HPACK, flow control, protobuf), "
        f"{1000 * spent / attestations:.3f} ms with the client's h2 ({attestations} attestations)"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--price"]:
        price(int(sys.argv[2]))
    else:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        asyncio.run(serve(globals().get("EARLY")))
