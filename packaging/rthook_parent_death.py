"""PyInstaller runtime hook: the plugin process ends when its launcher dies.

A one-file executable runs as two processes: the launcher (the file SPIRE executes,
hashes and signals) unpacks the native libraries into a private temporary directory and
starts a second process that runs Python. SPIRE starts plugins with Pdeathsig=SIGKILL,
which reaches the launcher only; SIGKILL cannot be forwarded, so without this hook the
Python process would live on as an orphan and the unpacked directory would stay behind.

Here the kernel sends the Python process SIGUSR2 when the launcher dies
(PR_SET_PDEATHSIG); the handler removes the unpacked directory (the libraries already
mapped stay usable) and sends SIGTERM to this process, which the plugin runtime answers
with its ordinary graceful shutdown. SIGUSR2 that does not come from a dead launcher
(the launcher forwards signals it receives) is ignored.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1


def _install() -> None:
    if not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    unpacked = getattr(sys, "_MEIPASS", None)
    done = threading.Event()

    def launcher_died(signum: int, frame: object) -> None:
        if os.getppid() == launcher or done.is_set():
            return
        done.set()
        if unpacked:
            shutil.rmtree(unpacked, ignore_errors=True)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGUSR2, launcher_died)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGUSR2, 0, 0, 0) != 0:
        return
    # The launcher may have died before prctl took effect.
    if os.getppid() != launcher:
        launcher_died(signal.SIGUSR2, None)


_install()
