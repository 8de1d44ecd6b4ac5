"""An interposer on the TPM "bus": a TCP relay between a swtpm TCTI and the simulator.

It forwards both of swtpm's ports (commands at P, control at P+1, as the swtpm TCTI
expects) and records every byte of the command channel in both directions, which is
what someone with a probe on the LPC/SPI lines between CPU and TPM would see.
"""

from __future__ import annotations

import contextlib
import socket
import threading
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


class BusTap:
    """Relays a TCTI to `simulator` and keeps what crossed the command channel."""

    def __init__(self, simulator: SWTPM) -> None:
        self._simulator = simulator
        self._lock = threading.Lock()
        self._traffic = bytearray()
        self._sockets: list[socket.socket] = []
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
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink, record), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):  # either end closing ends the relay
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self._traffic += data
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
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
