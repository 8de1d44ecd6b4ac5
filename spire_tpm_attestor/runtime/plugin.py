"""Serving a SPIRE external plugin over hashicorp go-plugin (docs/protocol.md, section 1).

`serve()` does, in order: ignore SIGINT, check the magic cookie and protocol
version, start JSON logging on stderr, bind a gRPC server on a unix socket in a
private directory, register go-plugin's internal services and SPIRE's Init and
Config services next to the plugin's own, print the handshake line (the only
thing this process ever writes to stdout) and wait for Shutdown.

The server is `grpc.aio` on one event loop: a stream that waits (go-plugin's broker
and stdio streams, an attestation waiting for its payload or its answer) is a
suspended coroutine, not a thread. Handlers written as `async def` run on the loop and
must not block; plain (synchronous) handlers, such as the agent's, which talks to the
TPM, run on the worker threads of `WORKER_THREADS`, and so do Configure and Validate,
whose configuration builders read files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from spire_tpm_attestor.pb import (
    go_plugin_pb2,
    go_plugin_pb2_grpc,
    spire_config_pb2,
    spire_config_pb2_grpc,
    spire_init_pb2,
    spire_init_pb2_grpc,
)
from spire_tpm_attestor.runtime import observability
from spire_tpm_attestor.runtime.config import Closeable, ConfigProblems, CoreConfig
from spire_tpm_attestor.runtime.logs import configure_logging
from spire_tpm_attestor.runtime.metrics import ENDPOINT, Counter
from spire_tpm_attestor.runtime.status import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    PluginError,
)

log = logging.getLogger("spire_tpm_attestor.runtime")

MAGIC_COOKIE_KEY = "NodeAttestor"
MAGIC_COOKIE_VALUE = "NodeAttestor"
CORE_PROTOCOL_VERSION = 1
APP_PROTOCOL_VERSION = 1
CONFIG_SERVICE = "spire.service.common.config.v1.Config"
HOST_SERVICES_BROKER_ID = 1
# Threads for blocking work only: synchronous handlers (the agent's attestation, one
# stream at a time in practice), configuration builds and blocking lookups. A waiting
# stream holds none; the pool creates threads lazily.
WORKER_THREADS = 32
SHUTDOWN_GRACE_SECONDS = 0.25


INTERNAL_ERRORS = Counter(
    "internal_errors_total",
    "RPCs answered INTERNAL: a bug (with a traceback in the log) or, on the agent, the TPM",
)


class PluginConfig(Closeable, Protocol):
    @property
    def observability(self) -> observability.Observability: ...


C = TypeVar("C", bound=PluginConfig)
R = TypeVar("R")


class ConfigHolder(Generic[C]):
    """The current configuration, swapped atomically by Configure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: C | None = None

    def get(self) -> C:
        current = self._current
        if current is None:
            raise FailedPrecondition("not configured")
        return current

    def current(self) -> C | None:
        """The configuration in force; None before the first Configure."""
        return self._current

    def swap(self, new: C) -> None:
        with self._lock:
            old, self._current = self._current, new
        if old is not None:
            old.close()

    def close(self) -> None:
        with self._lock:
            old, self._current = self._current, None
        if old is not None:
            old.close()


def _nothing_to_start(config: object) -> None:
    """Most configurations start nothing: building them is all there is."""


def _no_notes(config: object) -> Sequence[str]:
    return ()


@dataclass(frozen=True)
class PluginSpec(Generic[C]):
    """What distinguishes one plugin: its SPIRE service, config builder and servicer.

    `build_config` is inert: Validate and a rejected Configure build a configuration
    and close it. `start_config` starts what a built configuration watches or fetches,
    for the one Configure commits, before it is swapped in (both on a worker thread).
    `validation_notes` is what Validate reports about a configuration it accepts.
    `register_service` gets a `grpc.aio.Server`; the servicer's methods may be `async`
    (run on the event loop) or plain (run on a worker thread)."""

    name: str
    service_name: str
    build_config: Callable[[str, CoreConfig], C]
    register_service: Callable[[Any, ConfigHolder[C]], None]
    start_config: Callable[[C], None] = _nothing_to_start
    validation_notes: Callable[[C], Sequence[str]] = _no_notes


def answer(error: PluginError) -> tuple[grpc.StatusCode, str]:
    """The status and details to end an RPC with for `error` (an INTERNAL is counted)."""
    if error.code == grpc.StatusCode.INTERNAL:
        INTERNAL_ERRORS.inc()
    return error.code, error.message


def unexpected() -> Internal:
    """For what no handler expected (a bug): its one traceback, and INTERNAL."""
    log.exception("unexpected error")
    return Internal("internal error; see the plugin log")


def peer_ended(cause: str) -> None:
    """A stream the peer cancelled or closed (SPIRE refusing the node, unloading the
    plugin, an agent gone mid-challenge) is the normal end of a conversation, not a
    fault of the plugin's: one debug line."""
    log.debug("stream ended by the peer", extra={"while": cause})


class StreamEnded(Exception):
    """The peer closed its side of a stream before the handler was done with it (SPIRE
    ends the agent's stream when the server refused the node): not a fault."""


def stream_guarded(context: Any, responses: Iterator[R]) -> Iterator[R]:
    """A synchronous streaming handler (run on a worker thread): our errors end it with
    their status, anything else with INTERNAL; the process never dies on bad input.

    A stream the peer ended ends with `peer_ended`'s line, however the handler learns
    of it: gRPC stops pulling its responses (and closes the generator), the request
    iterator fails (a cancelled RPC), or the handler finds it closed (StreamEnded)."""
    try:
        yield from responses
    except GeneratorExit:
        peer_ended("waiting to send")
        raise
    except (StreamEnded, grpc.RpcError) as exc:
        peer_ended(type(exc).__name__)
    except Exception as exc:
        error = exc if isinstance(exc, PluginError) else unexpected()
        context.abort(*answer(error))


async def run_guarded(context: Any, action: Awaitable[R]) -> R:
    """An `async` handler: PluginError becomes its status, anything else INTERNAL; a
    cancelled RPC (the peer ended it) ends with `peer_ended`'s line. (A handler that
    reads the end of its stream says so itself: a cancel may reach it as that end.)"""
    try:
        return await action
    except asyncio.CancelledError:
        peer_ended("waiting")
        raise
    except Exception as exc:
        error = exc if isinstance(exc, PluginError) else unexpected()
        await context.abort(*answer(error))
    raise AssertionError("unreachable: context.abort raises")


class BrokerService(go_plugin_pb2_grpc.GRPCBrokerServicer):
    """go-plugin's broker: SPIRE announces its host-services socket here (id 1).

    The stream must stay open for the life of the process, or SPIRE's
    `broker.Accept(1)` fails and the plugin is not loaded.
    """

    def __init__(self) -> None:
        self.connections: dict[int, go_plugin_pb2.ConnInfo] = {}

    async def StartStream(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[go_plugin_pb2.ConnInfo], context: Any
    ) -> None:
        async for info in request_iterator:
            self.connections[info.service_id] = info
            log.debug(
                "broker connection announced",
                extra={"service_id": info.service_id, "address": info.address},
            )
        await wait_until_cancelled()


async def wait_until_cancelled() -> None:
    """Suspend until the RPC ends (grpc cancels the handler then); holds no thread."""
    await asyncio.Event().wait()


class StdioService(go_plugin_pb2_grpc.GRPCStdioServicer):
    """go-plugin's stdio relay: SPIRE discards it, so we hold it open and send nothing."""

    async def StreamStdio(self, request: Any, context: Any) -> None:  # noqa: N802
        await wait_until_cancelled()


class ControllerService(go_plugin_pb2_grpc.GRPCControllerServicer):
    def __init__(self, shutdown: asyncio.Event) -> None:
        self._shutdown = shutdown

    async def Shutdown(  # noqa: N802
        self, request: go_plugin_pb2.Empty, context: Any
    ) -> go_plugin_pb2.Empty:
        log.debug("shutdown requested")
        self._shutdown.set()
        return go_plugin_pb2.Empty()


class InitService(spire_init_pb2_grpc.InitServicer):
    def __init__(self, service_name: str) -> None:
        self._service_name = service_name

    async def Init(  # noqa: N802
        self, request: spire_init_pb2.InitRequest, context: Any
    ) -> spire_init_pb2.InitResponse:
        log.debug("init", extra={"host_services": ",".join(request.host_service_names)})
        return spire_init_pb2.InitResponse(
            plugin_service_names=[self._service_name, CONFIG_SERVICE]
        )

    async def Deinit(  # noqa: N802
        self, request: spire_init_pb2.DeinitRequest, context: Any
    ) -> spire_init_pb2.DeinitResponse:
        return spire_init_pb2.DeinitResponse()


class ConfigService(spire_config_pb2_grpc.ConfigServicer, Generic[C]):
    """Configure and Validate; the builder reads files, so it runs on a worker thread
    while attestations go on."""

    def __init__(self, spec: PluginSpec[C], holder: ConfigHolder[C]) -> None:
        self._spec = spec
        self._holder = holder

    async def Configure(  # noqa: N802
        self, request: spire_config_pb2.ConfigureRequest, context: Any
    ) -> spire_config_pb2.ConfigureResponse:
        def configure() -> spire_config_pb2.ConfigureResponse:
            core = CoreConfig(trust_domain=request.core_configuration.trust_domain)
            try:
                config = self._spec.build_config(request.hcl_configuration, core)
            except ConfigProblems as problems:
                log.error("configuration rejected", extra={"problems": str(problems)})
                raise InvalidArgument(f"invalid configuration: {problems}") from problems
            try:
                self._spec.start_config(config)
                apply_observability(config)
            except BaseException:
                config.close()
                raise
            self._holder.swap(config)
            log.info("configured", extra={"trust_domain": core.trust_domain})
            return spire_config_pb2.ConfigureResponse()

        return await run_guarded(context, asyncio.to_thread(configure))

    async def Validate(  # noqa: N802
        self, request: spire_config_pb2.ValidateRequest, context: Any
    ) -> spire_config_pb2.ValidateResponse:
        def validate() -> spire_config_pb2.ValidateResponse:
            core = CoreConfig(trust_domain=request.core_configuration.trust_domain)
            try:
                config = self._spec.build_config(request.hcl_configuration, core)
            except ConfigProblems as problems:
                return spire_config_pb2.ValidateResponse(valid=False, notes=problems.problems)
            notes = list(self._spec.validation_notes(config))
            config.close()
            # SPIRE treats any note as a problem, so a good config gets none; one that
            # leaves something out (a CA file that cannot be used) says so all the same.
            return spire_config_pb2.ValidateResponse(valid=True, notes=notes)

        return await run_guarded(context, asyncio.to_thread(validate))


def apply_observability(config: PluginConfig) -> None:
    try:
        observability.apply(config.observability)
    except OSError as exc:  # the endpoint's address is taken or not ours
        raise FailedPrecondition(f"telemetry: cannot serve metrics: {exc}") from exc


def check_launched_by_host() -> str | None:
    """Return why this process was not started by a go-plugin host, or None."""
    if os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        return (
            "This binary is a SPIRE plugin. It is not meant to be run directly: register it in "
            "spire-agent/spire-server configuration with plugin_cmd, or try it with "
            "`spire-tpm-attestor check`."
        )
    offered = os.environ.get("PLUGIN_PROTOCOL_VERSIONS", str(APP_PROTOCOL_VERSION)).split(",")
    if str(APP_PROTOCOL_VERSION) not in [v.strip() for v in offered]:
        return (
            f"the plugin host offers protocol versions {','.join(offered)}; "
            f"this plugin speaks {APP_PROTOCOL_VERSION}"
        )
    return None


async def build_server(
    spec: PluginSpec[C],
    holder: ConfigHolder[C],
    shutdown: asyncio.Event,
    workers: ThreadPoolExecutor,
) -> Any:
    """The `grpc.aio.Server` with every service registered (call on the event loop)."""
    server = grpc.aio.server(migration_thread_pool=workers)
    go_plugin_pb2_grpc.add_GRPCBrokerServicer_to_server(BrokerService(), server)
    go_plugin_pb2_grpc.add_GRPCStdioServicer_to_server(StdioService(), server)
    go_plugin_pb2_grpc.add_GRPCControllerServicer_to_server(ControllerService(shutdown), server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("plugin", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    spire_init_pb2_grpc.add_InitServicer_to_server(InitService(spec.service_name), server)
    spire_config_pb2_grpc.add_ConfigServicer_to_server(ConfigService(spec, holder), server)
    spec.register_service(server, holder)
    return server


def private_directory() -> str:
    """A new directory that only this user may enter (0700), for the plugin's socket: in
    the first of TMPDIR, TEMP, TMP, /tmp, /var/tmp and /usr/tmp where one can be made,
    as `tempfile.mkdtemp` would choose. (tempfile, and shutil with it, would add about
    5% to the time before the handshake line.)"""
    names = ("TMPDIR", "TEMP", "TMP")
    candidates = [os.environ[name] for name in names if os.environ.get(name)]
    candidates += ["/tmp", "/var/tmp", "/usr/tmp"]
    for parent in candidates:
        for _ in range(8):  # another process may have taken the name
            path = os.path.join(parent, f"spire-tpm-{os.urandom(6).hex()}")
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            except OSError:
                break  # not usable: the next candidate
            return path
    raise FileNotFoundError(f"no directory to hold the plugin socket in {candidates}")


async def _serve(spec: PluginSpec[C]) -> None:
    loop = asyncio.get_running_loop()
    workers = ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="rpc")
    loop.set_default_executor(workers)  # asyncio.to_thread uses the same threads
    shutdown = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, shutdown.set)
    holder: ConfigHolder[C] = ConfigHolder()
    socket_dir = private_directory()  # 0700: only our user can connect
    socket_path = os.path.join(socket_dir, "plugin.sock")
    server = await build_server(spec, holder, shutdown, workers)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()

    sys.stdout.write(f"{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{socket_path}|grpc\n")
    sys.stdout.flush()
    # From here on stdout belongs to nobody: a stray print must not reach SPIRE's pipe.
    sys.stdout = sys.stderr
    log.debug("plugin serving", extra={"plugin": spec.name, "socket": socket_path})

    await shutdown.wait()
    await server.stop(SHUTDOWN_GRACE_SECONDS)
    holder.close()
    ENDPOINT.close()
    for remove, path in ((os.unlink, socket_path), (os.rmdir, socket_dir)):
        with contextlib.suppress(OSError):  # gone already
            remove(path)
    logging.shutdown()
    # Worker threads may still be inside a TPM command; leave now so SPIRE's 2 s unload
    # budget holds (asyncio.run would wait for them).
    os._exit(0)


def serve(spec: PluginSpec[C]) -> None:
    """Run the plugin process until SPIRE calls Shutdown (or kills it)."""
    # A terminal Ctrl-C reaches the whole process group; SPIRE, not the TTY, ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    refusal = check_launched_by_host()
    if refusal is not None:
        sys.stderr.write(refusal + "\n")
        sys.exit(1)
    configure_logging()
    asyncio.run(_serve(spec))
