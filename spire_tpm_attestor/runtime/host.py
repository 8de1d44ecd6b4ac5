"""The go-plugin host: runs plugin executables the way SPIRE's catalog does.

It sets go-plugin's environment, reads and checks the handshake line, keeps the
broker and stdio streams open, calls Init and Configure, and unloads with Deinit
and Shutdown; `relay_attestation` plays spire-agent and spire-server between an
agent plugin and a server plugin. Tests and `spire-tpm-attestor check` use it.
It talks to plugins only over the wire, so it never imports `runtime.plugin`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import empty_pb2

from spire_tpm_attestor.pb import (
    go_plugin_pb2,
    go_plugin_pb2_grpc,
    spire_agent_nodeattestor_pb2,
    spire_agent_nodeattestor_pb2_grpc,
    spire_config_pb2,
    spire_config_pb2_grpc,
    spire_init_pb2,
    spire_init_pb2_grpc,
    spire_server_nodeattestor_pb2,
    spire_server_nodeattestor_pb2_grpc,
)

AGENT_SERVICE = "spire.plugin.agent.nodeattestor.v1.NodeAttestor"
SERVER_SERVICE = "spire.plugin.server.nodeattestor.v1.NodeAttestor"
CONFIG_SERVICE = "spire.service.common.config.v1.Config"
# What spire-server passes in InitRequest (docs/protocol.md, "Services served").
SERVER_HOST_SERVICES = (
    "spire.hostservice.server.identityprovider.v1.IdentityProvider",
    "spire.hostservice.server.agentstore.v1.AgentStore",
    "spire.hostservice.common.metrics.v1.Metrics",
)
AGENT_HOST_SERVICES = ("spire.hostservice.common.metrics.v1.Metrics",)
HANDSHAKE_TIMEOUT_SECONDS = 60.0
EXIT_TIMEOUT_SECONDS = 2.0

T = TypeVar("T")


class HarnessError(Exception):
    """The plugin did not behave as SPIRE requires."""


@dataclass(frozen=True)
class Handshake:
    core_version: str
    app_version: str
    network: str
    address: str
    protocol: str
    raw: str

    @classmethod
    def parse(cls, line: str) -> Handshake:
        parts = line.strip().split("|")
        if len(parts) < 4:
            raise HarnessError(f"Unrecognized remote plugin message: {line!r}")
        protocol = parts[4] if len(parts) > 4 else "netrpc"
        handshake = cls(parts[0], parts[1], parts[2], parts[3], protocol, line)
        if handshake.core_version != "1":
            raise HarnessError(f"incompatible core API version {handshake.core_version}")
        if handshake.app_version != "1":
            raise HarnessError(f"incompatible API version {handshake.app_version}")
        if handshake.network not in ("unix", "tcp"):
            raise HarnessError(f"unknown network {handshake.network!r}")
        if handshake.protocol != "grpc":
            raise HarnessError(f"unsupported plugin protocol {handshake.protocol!r}")
        if len(parts) > 5 and len(parts[5]) > 50:
            raise HarnessError("plugin sent a server certificate, which SPIRE cannot accept")
        return handshake


class RequestQueue(Generic[T]):
    """A request iterator for a client-side gRPC stream, fed from another thread."""

    _END = object()

    def __init__(self) -> None:
        self._items: queue.Queue[Any] = queue.Queue()

    def put(self, item: T) -> None:
        self._items.put(item)

    def close(self) -> None:
        self._items.put(self._END)

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._items.get()
            if item is self._END:
                return
            yield item


@dataclass
class PluginProcess:
    """One running plugin executable, loaded like SPIRE loads it."""

    argv: Sequence[str]
    process: subprocess.Popen[bytes]
    handshake: Handshake
    channel: grpc.Channel
    stdout_after_handshake: list[bytes] = field(default_factory=list)
    stderr_lines: list[bytes] = field(default_factory=list)
    plugin_service_names: list[str] = field(default_factory=list)
    # Seconds from just before exec until the handshake line was read (for benchmarks).
    handshake_seconds: float = 0.0
    _broker_requests: RequestQueue[go_plugin_pb2.ConnInfo] = field(default_factory=RequestQueue)
    _background: list[Any] = field(default_factory=list)
    _host_dir: str = ""

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        host_service_names: Sequence[str] = (),
        cwd: str | None = None,
    ) -> PluginProcess:
        environment = dict(os.environ if env is None else env)
        environment.update(
            {
                "NodeAttestor": "NodeAttestor",
                "PLUGIN_MIN_PORT": "10000",
                "PLUGIN_MAX_PORT": "25000",
                "PLUGIN_PROTOCOL_VERSIONS": "1",
            }
        )
        launched = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            cwd=cwd,
        )
        stderr_lines: list[bytes] = []
        _pump(process.stderr, stderr_lines)
        line = _read_first_line(process, HANDSHAKE_TIMEOUT_SECONDS)
        handshake_seconds = time.perf_counter() - launched
        handshake = Handshake.parse(line.decode("utf-8", "replace"))
        target = f"unix:{handshake.address}" if handshake.network == "unix" else handshake.address
        channel = grpc.insecure_channel(target)
        plugin = cls(
            argv=argv,
            process=process,
            handshake=handshake,
            channel=channel,
            stderr_lines=stderr_lines,
            handshake_seconds=handshake_seconds,
        )
        _pump(process.stdout, plugin.stdout_after_handshake)
        try:
            plugin._connect(host_service_names)
        except Exception:
            plugin.kill()
            raise
        return plugin

    def _connect(self, host_service_names: Sequence[str]) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=10)
        broker = go_plugin_pb2_grpc.GRPCBrokerStub(self.channel)
        self._background.append(broker.StartStream(iter(self._broker_requests)))
        stdio = go_plugin_pb2_grpc.GRPCStdioStub(self.channel)
        self._background.append(stdio.StreamStdio(empty_pb2.Empty()))
        # Like broker.Accept(1): announce where the host services would be served.
        self._host_dir = tempfile.mkdtemp(prefix="sta-host-")
        self._broker_requests.put(
            go_plugin_pb2.ConnInfo(
                service_id=1, network="unix", address=os.path.join(self._host_dir, "host.sock")
            )
        )
        init = spire_init_pb2_grpc.InitStub(self.channel)
        response = init.Init(
            spire_init_pb2.InitRequest(host_service_names=list(host_service_names)), timeout=10
        )
        self.plugin_service_names = list(response.plugin_service_names)

    def configure(self, hcl: str, trust_domain: str = "example.org") -> None:
        spire_config_pb2_grpc.ConfigStub(self.channel).Configure(
            spire_config_pb2.ConfigureRequest(
                core_configuration=spire_config_pb2.CoreConfiguration(trust_domain=trust_domain),
                hcl_configuration=hcl,
            ),
            timeout=30,
        )

    def validate(self, hcl: str, trust_domain: str = "example.org") -> list[str]:
        response = spire_config_pb2_grpc.ConfigStub(self.channel).Validate(
            spire_config_pb2.ValidateRequest(
                core_configuration=spire_config_pb2.CoreConfiguration(trust_domain=trust_domain),
                hcl_configuration=hcl,
            ),
            timeout=30,
        )
        return list(response.notes)

    def agent_stub(self) -> spire_agent_nodeattestor_pb2_grpc.NodeAttestorStub:
        return spire_agent_nodeattestor_pb2_grpc.NodeAttestorStub(self.channel)

    def server_stub(self) -> spire_server_nodeattestor_pb2_grpc.NodeAttestorStub:
        return spire_server_nodeattestor_pb2_grpc.NodeAttestorStub(self.channel)

    def stop(self) -> float:
        """Unload like SPIRE: Deinit, close the broker, Shutdown, wait 2 s, then kill.

        Returns how long the process took to exit after Shutdown.
        """
        with contextlib.suppress(grpc.RpcError):  # SPIRE logs and goes on
            spire_init_pb2_grpc.InitStub(self.channel).Deinit(
                spire_init_pb2.DeinitRequest(), timeout=10
            )
        self._broker_requests.close()
        started = time.monotonic()
        with contextlib.suppress(grpc.RpcError):  # go-plugin ignores Shutdown errors
            go_plugin_pb2_grpc.GRPCControllerStub(self.channel).Shutdown(
                go_plugin_pb2.Empty(), timeout=2
            )
        self.channel.close()
        try:
            self.process.wait(timeout=EXIT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
        elapsed = time.monotonic() - started
        self._cleanup()
        return elapsed

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.channel.close()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._host_dir:
            shutil.rmtree(self._host_dir, ignore_errors=True)
            self._host_dir = ""

    def __enter__(self) -> PluginProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.stop()


def _pump(stream: Any, sink: list[bytes]) -> None:
    def run() -> None:
        for line in iter(stream.readline, b""):
            sink.append(line)

    threading.Thread(target=run, daemon=True, name="plugin-pipe").start()


def _read_first_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    result: queue.Queue[bytes] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: result.put(stdout.readline()), daemon=True).start()
    try:
        line = result.get(timeout=timeout)
    except queue.Empty:
        process.kill()
        raise HarnessError("timeout while waiting for plugin to start") from None
    if not line:
        process.wait()
        raise HarnessError(f"plugin exited before we could connect (exit {process.returncode})")
    return line


@dataclass(frozen=True)
class AttestationResult:
    spiffe_id: str
    selectors: list[str]
    can_reattest: bool
    challenge_rounds: int


class AttestationFailed(Exception):
    """One of the plugins ended the attestation with an error status."""

    def __init__(self, side: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{side} plugin: {code.name}: {details}")
        self.side = side
        self.code = code
        self.details = details


def relay_attestation(
    agent: PluginProcess, server: PluginProcess, timeout: float = 60.0
) -> AttestationResult:
    """Run one node attestation, relaying messages as spire-agent and spire-server do."""
    agent_requests: RequestQueue[spire_agent_nodeattestor_pb2.Challenge] = RequestQueue()
    server_requests: RequestQueue[spire_server_nodeattestor_pb2.AttestRequest] = RequestQueue()
    agent_stream = agent.agent_stub().AidAttestation(iter(agent_requests), timeout=timeout)
    server_stream = server.server_stub().Attest(iter(server_requests), timeout=timeout)
    try:
        first = _next(agent_stream, "agent")
        if first.WhichOneof("data") != "payload" or not first.payload:
            raise HarnessError("plugin response missing attestation payload")
        server_requests.put(spire_server_nodeattestor_pb2.AttestRequest(payload=first.payload))
        rounds = 0
        while True:
            response = _next(server_stream, "server")
            kind = response.WhichOneof("response")
            if kind == "agent_attributes":
                attributes = response.agent_attributes
                if not attributes.spiffe_id:
                    raise HarnessError("plugin response missing agent ID")
                return AttestationResult(
                    spiffe_id=attributes.spiffe_id,
                    selectors=list(attributes.selector_values),
                    can_reattest=attributes.can_reattest,
                    challenge_rounds=rounds,
                )
            if kind != "challenge":
                raise HarnessError("plugin response missing challenge or agent attributes")
            rounds += 1
            agent_requests.put(spire_agent_nodeattestor_pb2.Challenge(challenge=response.challenge))
            answer = _next(agent_stream, "agent")
            if answer.WhichOneof("data") != "challenge_response" or not answer.challenge_response:
                raise HarnessError("plugin response missing challenge response")
            server_requests.put(
                spire_server_nodeattestor_pb2.AttestRequest(
                    challenge_response=answer.challenge_response
                )
            )
    finally:
        agent_requests.close()
        server_requests.close()
        agent_stream.cancel()
        server_stream.cancel()


def _next(stream: Iterator[T], side: str) -> T:
    try:
        return next(stream)
    except StopIteration:
        raise HarnessError(f"{side} plugin closed stream unexpectedly") from None
    except grpc.RpcError as error:
        raise AttestationFailed(side, error.code(), error.details() or "") from None
