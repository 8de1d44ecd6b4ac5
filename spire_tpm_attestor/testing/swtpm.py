"""swtpm simulators with TCG-style EK certificates, for the tests and `make demo`.

`SWTPM` runs one fresh simulator on free localhost ports; `provision_ek_certificates` puts
EK certificates issued by a `testing.ca.TestCA` into the simulator's NV the way a TPM
manufacturer does. tpm2-pytss is imported only inside the functions that talk to the TPM,
so the module loads on machines without libtss2 (the server side, the unit tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spire_tpm_attestor.testing.ca import EKPublicKey, TestCA
from spire_tpm_attestor.tpm.constants import EK_CHAIN_FIRST_INDEX, RC_NO_SUCH_HANDLE
from spire_tpm_attestor.tpm.constants import EK_TEMPLATES as TCG_EK_TEMPLATES

# Algorithm names the agent uses, mapped to the TCG template provisioned for them.
DEFAULT_EK_TYPES = {"rsa2048": "L-1", "ecc256": "L-2", "ecc384": "H-3"}

# TCG template name -> (tpm2-pytss lookup name, certificate NV index) of the templates
# that can be provisioned here.
_PROVISIONED_TEMPLATES = ("L-1", "L-2", "H-1", "H-2", "H-3", "H-6")
EK_TEMPLATES: dict[str, tuple[str, int]] = {
    t.tcg_name: (t.template, t.cert_index)
    for t in TCG_EK_TEMPLATES
    if t.tcg_name in _PROVISIONED_TEMPLATES
}

# NV writes are split to stay under TPM2_PT_NV_BUFFER_MAX (1024 on swtpm).
_NV_WRITE_CHUNK = 512


class SWTPMError(RuntimeError):
    """The simulator could not be started, provisioned or stopped."""


def _matching_foreign_key(public_key: EKPublicKey) -> EKPublicKey:
    """A fresh public key of the same kind and size, belonging to no TPM."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return rsa.generate_private_key(65537, public_key.key_size).public_key()
    return ec.generate_private_key(public_key.curve).public_key()


def _free_port_pair() -> int:
    """A localhost port P with P+1 also free: the swtpm TCTI expects control at P+1."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise SWTPMError("no pair of consecutive free TCP ports on 127.0.0.1")


class SWTPM:
    """One swtpm TPM 2.0 simulator on 127.0.0.1, as a context manager.

    With no `state_dir` it starts from an empty temporary state (a freshly manufactured
    TPM) that is removed on stop; a given `state_dir` is kept. The simulator's own output
    goes to `log_path`, never to our stdout.
    """

    _STARTUP_ATTEMPTS = 3

    def __init__(self, state_dir: Path | None = None, startup_timeout: float = 10.0) -> None:
        self._owns_state = state_dir is None
        self.state_dir = Path(tempfile.mkdtemp(prefix="swtpm-")) if state_dir is None else state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.state_dir / "swtpm.log"
        self.port = 0
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def ctrl_port(self) -> int:
        return self.port + 1

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def __enter__(self) -> SWTPM:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if shutil.which("swtpm") is None:
            raise SWTPMError("swtpm is not installed (Debian: apt-get install swtpm swtpm-tools)")
        # Another process can take the ports between our probe and swtpm's bind: retry.
        for _ in range(self._STARTUP_ATTEMPTS):
            self.port = _free_port_pair()
            if self._launch():
                return
        raise SWTPMError(f"swtpm did not start; its log:\n{self._log_tail()}")

    def _launch(self) -> bool:
        command = [
            "swtpm", "socket", "--tpm2",
            "--tpmstate", f"dir={self.state_dir}",
            "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={self.ctrl_port},bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        self._kill()
        return False

    def stop(self) -> None:
        """Shuts the simulator down (gracefully if it answers) and removes owned state."""
        try:
            if self._process is not None and self._process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run(
                        ["swtpm_ioctl", "--tcp", f"127.0.0.1:{self.ctrl_port}", "-s"],
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        timeout=5,
                        check=False,
                    )
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._kill()
            self._process = None
        finally:
            if self._owns_state:
                shutil.rmtree(self.state_dir, ignore_errors=True)

    def kill(self) -> None:
        """Kills the simulator at once (SIGKILL), as a crash would; its state stays."""
        self._kill()

    def restart(self) -> None:
        """After `kill()`: the simulator again, on the same ports, from its state."""
        deadline = time.monotonic() + self._startup_timeout
        while not self._launch():  # the ports may take a moment to be free again
            if time.monotonic() > deadline:
                raise SWTPMError(f"swtpm did not restart; its log:\n{self._log_tail()}")
            time.sleep(0.05)

    def pause(self) -> None:
        """Stops the simulator (SIGSTOP): connections stay open, nothing is answered."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def _esapi(tcti: str) -> Iterator[Any]:
    # Probing absent NV indices is expected; keep ESYS from logging each one.
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    from tpm2_pytss import ESAPI

    esapi = ESAPI(tcti)
    try:
        yield esapi
    finally:
        esapi.close()


def _ek_public_key(esapi: Any, template_name: str, cert_index: int) -> EKPublicKey:
    """Creates the EK from its default template and returns its public key (EK flushed)."""
    from tpm2_pytss import ESYS_TR, TPM2B_SENSITIVE_CREATE
    from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

    nv_read = NVReadEK(esapi)

    def read_without_certificate(index: int) -> bytes:
        # create_ek_template refuses a high-range type without a certificate; we are
        # about to write that certificate, so report a placeholder instead.
        try:
            return bytes(nv_read(index))
        except NoSuchIndex:
            if index == cert_index:
                return b""
            raise

    _, template = create_ek_template(template_name, read_without_certificate)
    handle, public, *_ = esapi.create_primary(
        TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
    )
    esapi.flush_context(handle)
    key = serialization.load_der_public_key(public.to_der())
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise SWTPMError(f"unexpected EK key type {type(key).__name__}")
    return key


def _write_nv(esapi: Any, index: int, data: bytes) -> None:
    """(Re)defines a platform-created, world-readable NV index holding `data`."""
    from tpm2_pytss import (
        ESYS_TR,
        TPM2_ALG,
        TPM2B_NV_PUBLIC,
        TPMA_NV,
        TPMS_NV_PUBLIC,
        TSS2_Exception,
    )

    try:
        existing = esapi.tr_from_tpmpublic(index)
    except TSS2_Exception as error:
        if error.rc != RC_NO_SUCH_HANDLE:
            raise
    else:
        esapi.nv_undefine_space(existing, auth_handle=ESYS_TR.RH_PLATFORM)
    # The attributes TPM manufacturers give EK certificate indices (TCG EK Credential Profile).
    attributes = (
        TPMA_NV.PPWRITE
        | TPMA_NV.WRITEDEFINE
        | TPMA_NV.PPREAD
        | TPMA_NV.OWNERREAD
        | TPMA_NV.AUTHREAD
        | TPMA_NV.NO_DA
        | TPMA_NV.PLATFORMCREATE
    )
    nv_public = TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=attributes, dataSize=len(data)
        )
    )
    handle = esapi.nv_define_space(None, nv_public, auth_handle=ESYS_TR.RH_PLATFORM)
    try:
        for offset in range(0, len(data), _NV_WRITE_CHUNK):
            esapi.nv_write(
                handle,
                data[offset : offset + _NV_WRITE_CHUNK],
                offset,
                auth_handle=ESYS_TR.RH_PLATFORM,
            )
    finally:
        esapi.tr_close(handle)


def write_ek_certificate_nv(tcti: str, index: int, data: bytes) -> None:
    """Writes raw bytes (a certificate, possibly with a header or padding; a template, a
    nonce) to an NV index."""
    with _esapi(tcti) as esapi:
        _write_nv(esapi, index, data)


def provision_ek_chain(tcti: str, contents: Sequence[bytes]) -> None:
    """Writes each item of `contents` (one or more DER certificates, as a manufacturer
    stores them) to the next TCG EK chain index, from 0x01C00100 on."""
    with _esapi(tcti) as esapi:
        for offset, data in enumerate(contents):
            _write_nv(esapi, EK_CHAIN_FIRST_INDEX + offset, data)


def provision_ek_certificates(
    tcti: str,
    ca: TestCA,
    algorithms: Sequence[str] = ("rsa2048", "ecc256", "ecc384"),
    *,
    foreign_key: bool = False,
) -> dict[str, x509.Certificate]:
    """Gives the TPM EK certificates issued by `ca`, as a manufacturer does.

    Each entry of `algorithms` is an agent algorithm name ("rsa2048" -> L-1, "ecc256" ->
    L-2, "ecc384" -> H-3) or a TCG template name from `EK_TEMPLATES` ("H-1", ...). The EK
    is created from its default template, its certificate is issued by `ca` and written to
    the template's NV index with platform authorization. With `foreign_key` the
    certificates certify an unrelated key instead of the TPM's EK (for negative tests).
    Returns the certificates written, by the names given.
    """
    written: dict[str, x509.Certificate] = {}
    with _esapi(tcti) as esapi:
        for name in algorithms:
            ek_type = DEFAULT_EK_TYPES.get(name, name)
            if ek_type not in EK_TEMPLATES:
                raise ValueError(f"unknown EK algorithm or template {name!r}")
            template_name, cert_index = EK_TEMPLATES[ek_type]
            public_key = _ek_public_key(esapi, template_name, cert_index)
            if foreign_key:
                public_key = _matching_foreign_key(public_key)
            certificate = ca.issue_ek_certificate(public_key)
            _write_nv(esapi, cert_index, certificate.public_bytes(serialization.Encoding.DER))
            written[name] = certificate
    return written
