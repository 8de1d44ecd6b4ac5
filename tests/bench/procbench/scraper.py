"""Hostile scrapers for `procbench --observe`: `python scraper.py FLOOD_PORT SILENT_PORT`.

On FLOOD_PORT, a thousand scrapes a second (one connection each, the whole page read);
on SILENT_PORT, connections that are opened and then never send nor read (reopened when
the plugin drops them). Runs until killed; a plugin that is not up is simply retried.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

SCRAPES_PER_SECOND = 1000
SILENT_CONNECTIONS = 16
REQUEST = b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n"


def flood(port: int) -> None:
    interval = 1.0 / SCRAPES_PER_SECOND
    next_at = time.monotonic()
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
                connection.sendall(REQUEST)
                while connection.recv(65536):
                    pass
        except OSError:
            time.sleep(0.05)  # not up yet, or turned away
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at, time.monotonic() - 1)  # no burst to catch up after a stall


def silent(port: int) -> None:
    held: list[socket.socket] = []
    while True:
        for connection in list(held):
            try:
                connection.setblocking(False)
                if connection.recv(1) == b"":  # closed by the plugin
                    raise OSError
            except BlockingIOError:
                continue
            except OSError:
                held.remove(connection)
                connection.close()
        while len(held) < SILENT_CONNECTIONS:
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        time.sleep(0.2)


def main() -> None:
    flood_port, silent_port = int(sys.argv[1]), int(sys.argv[2])
    threading.Thread(target=silent, args=(silent_port,), daemon=True).start()
    flood(flood_port)


if __name__ == "__main__":
    main()
