"""An interposer on the TPM "bus": a TCP relay between a swtpm TCTI and the simulator.

It forwards both of swtpm's ports (commands at P, control at P+1, as the swtpm TCTI
expects) and records every byte of the command channel in both directions, which is
what someone with a probe on the LPC/SPI lines between CPU and TPM would see. It can
also play a TPM that fails at one command (`trap`): it stops answering, or the line
breaks, exactly there.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from spire_tpm_attestor.testing.swtpm import SWTPM


def _listen_pair() -> tuple[socket.socket, socket.socket]:
    for _ in range(100):
        first = socket.socket()
        first.bind(("127.0.0.1", 0))
        second = socket.socket()
        try:
            second.bind(("127.0.0.1", first.getsockname()[1] + 1))
        except OSError:
            first.close()
            second.close()
            continue
        first.listen()
        second.listen()
        return first, second
    raise RuntimeError("no pair of consecutive free ports on 127.0.0.1")


HEADER = struct.Struct(">HII")  # tag, size, command code


@dataclass
class Trap:
    """What happens to the first command with `command_code` from now on: held until
    `release` is set (a TPM that stopped answering), or, with `cut`, `cut()` is called
    (e.g. to kill the simulator) and the line is broken instead of forwarding it."""

    command_code: int
    cut: Callable[[], object] | None = None
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class BusTap:
    """Relays a TCTI to `simulator` and keeps what crossed the command channel."""

    def __init__(self, simulator: SWTPM) -> None:
        self._simulator = simulator
        self._lock = threading.Lock()
        self._traffic = bytearray()
        self._sockets: list[socket.socket] = []
        self._trap: Trap | None = None
        command, control = _listen_pair()
        self.port = command.getsockname()[1]
        for listener, target, record in (
            (command, simulator.port, True),
            (control, simulator.ctrl_port, False),
        ):
            self._sockets.append(listener)
            threading.Thread(
                target=self._accept, args=(listener, target, record), daemon=True
            ).start()

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def traffic(self) -> bytes:
        with self._lock:
            return bytes(self._traffic)

    def _accept(self, listener: socket.socket, target: int, record: bool) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", target))
            self._sockets += [client, upstream]
            for source, sink, commands in ((client, upstream, record), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, sink, record, commands), daemon=True
                ).start()

    def trap(self, trap: Trap) -> Trap:
        """Sets the trap for the next commands (one at a time)."""
        self._trap = trap
        return trap

    def _pump(
        self, source: socket.socket, sink: socket.socket, record: bool, commands: bool
    ) -> None:
        pending = bytearray()  # the command channel, cut at command boundaries
        with contextlib.suppress(OSError):  # either end closing ends the relay
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self._traffic += data
                if not commands:
                    sink.sendall(data)
                    continue
                pending += data
                while len(pending) >= HEADER.size:
                    size = HEADER.unpack_from(pending)[1]
                    if len(pending) < size:
                        break
                    command, pending = bytes(pending[:size]), pending[size:]
                    if not self._spring(command):
                        raise OSError("the trap broke the line")
                    sink.sendall(command)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def _spring(self, command: bytes) -> bool:
        """Whether `command` goes on (after the trap's hold, if it is the trapped one)."""
        trap = self._trap
        if trap is None or HEADER.unpack_from(command)[2] != trap.command_code:
            return True
        self._trap = None
        trap.reached.set()
        if trap.cut is not None:
            trap.cut()
            return False
        trap.release.wait()
        return True

    def close(self) -> None:
        trap = self._trap
        if trap is not None:
            trap.release.set()
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> BusTap:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
