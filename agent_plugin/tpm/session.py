"""The conversation with the TPM: the TCTI, handle bookkeeping, encrypted sessions.

Every transient object and session a session creates is flushed when it is released
or when the session closes, on every path: a TPM without a resource manager (swtpm has
three object slots) would otherwise refuse the next attestation.

Every ESAPI call runs on a thread of the session's own (`TimedESAPI`) and is waited for
at most `timeout`: libtss2's synchronous calls block until the TPM answers, and a TPM
behind a socket (swtpm, mssim) that stops answering would hold the attestation forever.
Past the timeout the session gives up on the TPM (TPMUnresponsive); the call left
waiting keeps its thread until the TPM answers, and then the session's objects are
flushed and the context closed, on that thread.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

import tpm2_pytss as tss

# One logger for the whole package, named as before it was split.
log = logging.getLogger("agent_plugin.tpm")

# tpm2-pytss objects are untyped; this alias marks where an ESYS_TR handle travels.
Handle = Any

DEFAULT_TCTIS = ("device:/dev/tpmrm0", "device:/dev/tpm0")
TCTI_NAMES = ("device", "swtpm", "mssim", "tabrmd")
# The server waits `challenge_timeout` (60 s by default) for each message: a TPM slower
# than that to answer one command has lost the attestation anyway.
DEFAULT_TPM_TIMEOUT = 60.0
TCTI_IO_ERROR = 0xA000A  # TSS2_TCTI_RC_IO_ERROR: the connection to the TPM broke


class TPMAccessError(Exception):
    """The agent could not use its TPM: it cannot be opened, refused a command, or was
    asked for something it cannot do. The message names the step and the TPM's reason.

    Unrelated to the core's errors about malformed or unproven TPM structures.
    """

    def __init__(self, message: str, rc: int | None = None) -> None:
        super().__init__(message)
        self.rc = rc


class TPMUnresponsive(TPMAccessError):
    """The TPM could not be reached: it did not answer a command within the timeout, or
    the connection to it broke. Transient, unlike a TPM that answers with a refusal."""

    def __init__(self, message: str, rc: int | None = None, step: str | None = None) -> None:
        super().__init__(message, rc)
        self.step = step  # the step that met it (the innermost tpm_step), once named


@contextmanager
def tpm_step(what: str) -> Iterator[None]:
    """Turns a TSS error into a TPMAccessError that says which step failed."""
    try:
        yield
    except tss.TSS2_Exception as error:
        if int(error.rc) == TCTI_IO_ERROR:
            raise TPMUnresponsive(f"{what}: {error}", int(error.rc), what) from error
        raise TPMAccessError(f"{what}: {error}", rc=int(error.rc)) from error
    except TPMUnresponsive as error:
        if error.step is not None:
            raise
        raise TPMUnresponsive(f"{what}: {error}", step=what) from None


Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class TimedESAPI:
    """An ESAPI context whose calls run on one thread of its own, each waited for at
    most `timeout` seconds; it stands in for `tss.ESAPI` (same methods).

    After a call the TPM did not answer in time, every call fails at once: the context
    is busy with the unanswered command. `finish(cleanup)` runs `cleanup` on the real
    context and ends the thread: at once when the TPM answers, else after the
    unanswered call returns (if ever), without waiting for it.
    """

    def __init__(self, tcti: str, timeout: float) -> None:
        self.tcti = tcti
        self.timeout = timeout
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._unanswered: str | None = None  # the call the TPM has not answered
        # A daemon: a thread stuck in libtss2 must not keep the process from exiting.
        threading.Thread(target=self._serve, name=f"tpm {tcti}", daemon=True).start()
        try:
            self._esapi = self._call("opening the TCTI", tss.ESAPI, tcti)
        except BaseException:
            self._jobs.put(None)
            raise

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function, args, kwargs = job
            try:
                future.set_result(function(*args, **kwargs))
            except BaseException as error:  # handed to the caller, as a call would raise it
                future.set_exception(error)

    def _call(self, name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._unanswered is not None:
            raise TPMUnresponsive(
                f"the TPM at {self.tcti} has not answered {self._unanswered} yet; not sending "
                f"{name}"
            )
        future: Future[Any] = Future()
        self._jobs.put((future, function, args, kwargs))
        try:
            return future.result(self.timeout)
        except TimeoutError:
            self._unanswered = name
            raise TPMUnresponsive(
                f"no answer from the TPM at {self.tcti} to {name} within {self.timeout:g}s"
            ) from None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):  # not an ESAPI method (and `_esapi` before it is set)
            raise AttributeError(name)
        method = getattr(self._esapi, name)
        return lambda *args, **kwargs: self._call(name, method, *args, **kwargs)

    def finish(self, cleanup: Callable[[Any], None]) -> None:
        """Runs `cleanup(esapi)` on the thread, then ends it; waits for it (at most
        `timeout`) only while the TPM answers."""
        future: Future[Any] = Future()
        self._jobs.put((future, cleanup, (self._esapi,), {}))
        self._jobs.put(None)
        if self._unanswered is None:
            try:
                future.result(self.timeout)
            except TimeoutError:
                log.warning(
                    "the TPM did not answer while its objects were flushed; the flush "
                    "goes on when it answers",
                    extra={"tcti": self.tcti},
                )

    def close(self) -> None:
        self.finish(lambda esapi: esapi.close())


def unmarshal_exactly(cls: Any, data: bytes, what: str) -> Any:
    try:
        value, consumed = cls.unmarshal(data)
    except (tss.TSS2_Exception, ValueError) as error:
        raise TPMAccessError(f"malformed {what}: {error}") from error
    if consumed != len(data):
        raise TPMAccessError(f"malformed {what}: {len(data) - consumed} trailing bytes")
    return value


def _aes128_cfb(definition: Any) -> Any:
    """AES-128-CFB as a TPMT_SYM_DEF (sessions) or TPMT_SYM_DEF_OBJECT (storage keys)."""
    return definition(
        algorithm=tss.TPM2_ALG.AES,
        keyBits=tss.TPMU_SYM_KEY_BITS(aes=128),
        mode=tss.TPMU_SYM_MODE(aes=tss.TPM2_ALG.CFB),
    )


def srk_template() -> Any:
    """The storage root key: always this template, so the TPM re-derives the same key.

    It equals tpm2-pytss's TSS2-PEM parent template, so keys saved as TSS2 PEM with the
    owner hierarchy as parent load under it.
    """
    attributes = (
        tss.TPMA_OBJECT.USERWITHAUTH
        | tss.TPMA_OBJECT.RESTRICTED
        | tss.TPMA_OBJECT.DECRYPT
        | tss.TPMA_OBJECT.NODA
        | tss.TPMA_OBJECT.FIXEDTPM
        | tss.TPMA_OBJECT.FIXEDPARENT
        | tss.TPMA_OBJECT.SENSITIVEDATAORIGIN
    )
    return tss.TPM2B_PUBLIC(
        publicArea=tss.TPMT_PUBLIC(
            type=tss.TPM2_ALG.ECC,
            nameAlg=tss.TPM2_ALG.SHA256,
            objectAttributes=attributes,
            parameters=tss.TPMU_PUBLIC_PARMS(
                eccDetail=tss.TPMS_ECC_PARMS(
                    symmetric=_aes128_cfb(tss.TPMT_SYM_DEF_OBJECT),
                    scheme=tss.TPMT_ECC_SCHEME(scheme=tss.TPM2_ALG.NULL),
                    curveID=tss.TPM2_ECC.NIST_P256,
                    kdf=tss.TPMT_KDF_SCHEME(scheme=tss.TPM2_ALG.NULL),
                )
            ),
        )
    )


def _device_problem(tcti: str) -> str | None:
    """Why a `device:` TCTI cannot work, in words better than libtss2's "IO failure"."""
    name, _, path = tcti.partition(":")
    if name != "device" or not path:
        return None
    if not os.path.exists(path):
        return "no such device"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"permission denied for uid {os.getuid()}"
    return None


def _open_esapi(tcti: str | None, timeout: float = DEFAULT_TPM_TIMEOUT) -> tuple[Any, str]:
    """An ESAPI context (TimedESAPI) on the first TCTI that answers, and that TCTI's
    string. A TPM that does not answer in time is TPMUnresponsive at once."""
    candidates = [tcti] if tcti else list(DEFAULT_TCTIS)
    failures = []
    for candidate in candidates:
        if candidate.partition(":")[0] not in TCTI_NAMES:
            failures.append(f"{candidate} (unsupported TCTI; use one of {', '.join(TCTI_NAMES)})")
            continue
        problem = _device_problem(candidate)
        if problem:
            failures.append(f"{candidate} ({problem})")
            continue
        try:
            esapi = TimedESAPI(candidate, timeout)
        except (tss.TSS2_Exception, RuntimeError) as error:
            failures.append(f"{candidate} ({error})")
            continue
        try:
            # Opening a TCTI does not prove a TPM answers behind it.
            esapi.get_capability(tss.TPM2_CAP.TPM_PROPERTIES, tss.TPM2_PT.MANUFACTURER, 1)
        except tss.TSS2_Exception as error:
            esapi.close()
            failures.append(f"{candidate} ({error})")
            continue
        except TPMUnresponsive:
            esapi.close()
            raise
        return esapi, candidate
    raise TPMAccessError("cannot open the TPM; tried " + "; ".join(failures))


def _transient_handles(esapi: Any) -> list[int]:
    # GetCapability(HANDLES) lists only handles of the type of its starting handle.
    handles: list[int] = []
    more, start = True, int(tss.TPM2_HC.TRANSIENT_FIRST)
    while more:
        more, data = esapi.get_capability(tss.TPM2_CAP.HANDLES, start, 64)
        handles.extend(int(handle) for handle in data.data.handles)
        if not handles:
            break
        start = handles[-1] + 1
    return handles


def flush_all_transients(tcti: str) -> int:
    """Flushes every transient object in the TPM, including other processes' (tests only).

    A process that died leaves its objects loaded on a TPM without a resource manager.
    Returns how many were flushed.
    """
    esapi, _ = _open_esapi(tcti)
    try:
        handles = _transient_handles(esapi)
        for handle in handles:
            with tpm_step(f"flushing {handle:#010x}"):
                esapi.flush_context(esapi.tr_from_tpmpublic(handle))
        return len(handles)
    finally:
        esapi.close()


def _release_all(esapi: Any, handles: list[tuple[Handle, bool]]) -> None:
    """Flushes the transients and forgets the persistents, last first, then closes the
    context; on the context's own thread (TimedESAPI.finish)."""
    for handle, transient in reversed(handles):
        try:
            if transient:
                esapi.flush_context(handle)
            else:
                esapi.tr_close(handle)
        except tss.TSS2_Exception as error:
            log.warning("could not release TPM handle %#x: %s", int(handle), error)
    esapi.close()


class SessionBase:
    """The TPM connection under every `TPMSession` operation, and what it has loaded.

    It tracks every handle it creates so `close()` can flush them, keeps the salted
    session that encrypts parameters, and creates the SRK that parents keys (and salts
    the session before the EK is loaded).
    """

    def __init__(
        self,
        tcti: str | None = None,
        *,
        require_encryption: bool = True,
        timeout: float = DEFAULT_TPM_TIMEOUT,
    ) -> None:
        self._esapi, self.tcti = _open_esapi(tcti, timeout)
        self._require_encryption = require_encryption
        log.debug("opened the TPM through %s", self.tcti)
        self._transients: list[Handle] = []  # flushed on release
        self._persistents: list[Handle] = []  # only the ESYS_TR is closed on release
        self._ek: Handle | None = None  # also the salt key of the encrypted session
        self._ak: Handle | None = None
        self._devid: Handle | None = None
        self._encrypted: Handle | None = None  # the salted session, started on first use

    @classmethod
    def open(
        cls,
        tcti: str | None = None,
        *,
        require_encryption: bool = True,
        timeout: float = DEFAULT_TPM_TIMEOUT,
    ) -> Self:
        """Opens the TPM behind `tcti` (None: /dev/tpmrm0, then /dev/tpm0); each command
        waits for the TPM at most `timeout` seconds."""
        return cls(tcti, require_encryption=require_encryption, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Releases everything this session created (once the TPM answers, if it
        stopped answering). Safe to call twice."""
        if self._esapi is None:
            return
        esapi, self._esapi = self._esapi, None
        handles = [(h, True) for h in self._transients] + [(h, False) for h in self._persistents]
        self._transients, self._persistents = [], []
        self._ek = self._ak = self._devid = self._encrypted = None
        esapi.finish(lambda context: _release_all(context, handles))

    # -- handle bookkeeping -------------------------------------------------------------

    def _track(self, handle: Handle, transient: bool = True) -> Handle:
        (self._transients if transient else self._persistents).append(handle)
        return handle

    def _release(self, handle: Handle | None) -> None:
        """Flushes a transient (or forgets a persistent) handle; never raises."""
        if handle is None:
            return
        for handles, release in (
            (self._transients, self._esapi.flush_context),
            (self._persistents, self._esapi.tr_close),
        ):
            if handle in handles:
                handles.remove(handle)
                try:
                    release(handle)
                except TPMUnresponsive:
                    handles.append(handle)  # released by close(), when the TPM answers
                except tss.TSS2_Exception as error:
                    # Raising here would hide the error that led to the cleanup.
                    log.warning("could not release TPM handle %#x: %s", int(handle), error)
                return

    def manufacturer(self) -> str:
        """TPM_PT_MANUFACTURER as text: "INTC", "AMD", "IFX", "IBM"..."""
        with tpm_step("reading the TPM manufacturer"):
            _, data = self._esapi.get_capability(
                tss.TPM2_CAP.TPM_PROPERTIES, tss.TPM2_PT.MANUFACTURER, 1
            )
        properties = [p for p in data.data.tpmProperties if p.property == tss.TPM2_PT.MANUFACTURER]
        value = int(properties[0].value) if properties else 0
        return value.to_bytes(4, "big").decode("ascii", "replace").strip("\x00 ")

    def _open_persistent(self, handle: int, what: str) -> Handle:
        with tpm_step(f"opening the {what} at persistent handle {handle:#010x}"):
            return self._track(self._esapi.tr_from_tpmpublic(handle), transient=False)

    def _read_public(self, handle: Handle) -> Any:
        with tpm_step("reading a public area"):
            public, _, _ = self._esapi.read_public(handle)
        return public

    # -- parameter encryption -----------------------------------------------------------

    def _session_for(self, *, encrypt_response: bool) -> Handle:
        """The session to put first on a command that carries a secret or a proof.

        A salted HMAC session: its key comes from a salt encrypted to the EK (or, before
        the EK is loaded, to the SRK), so someone on the TPM bus can neither read the
        first parameter of the command, nor of the response when `encrypt_response` (only
        for commands whose response starts with a TPM2B), nor forge either. A TPM without
        AES-128-CFB is refused, unless the session was opened without `require_encryption`:
        then it gets a plain password session.
        """
        if self._encrypted is None:
            self._encrypted = self._start_salted_session()
        if self._encrypted == tss.ESYS_TR.PASSWORD:
            return self._encrypted
        attributes = tss.TPMA_SESSION.CONTINUESESSION | tss.TPMA_SESSION.DECRYPT
        if encrypt_response:
            attributes |= tss.TPMA_SESSION.ENCRYPT
        self._esapi.trsess_set_attributes(self._encrypted, attributes)
        return self._encrypted

    def _start_salted_session(self) -> Handle:
        if not self._supports_aes_cfb():
            # Refused by default: an interposer could fake this answer to switch encryption off.
            if self._require_encryption:
                raise TPMAccessError(
                    "the TPM does not offer AES-128-CFB for parameter encryption; set "
                    "allow_unencrypted_sessions = true to attest without it"
                )
            log.warning("the TPM lacks AES-128-CFB: TPM commands run without encryption")
            return tss.ESYS_TR.PASSWORD
        srk = self._create_srk() if self._ek is None else None
        try:
            with tpm_step("starting the encrypted session"):
                return self._track(
                    self._esapi.start_auth_session(
                        self._ek if srk is None else srk,
                        tss.ESYS_TR.NONE,
                        tss.TPM2_SE.HMAC,
                        _aes128_cfb(tss.TPMT_SYM_DEF),
                        tss.TPM2_ALG.SHA256,
                    )
                )
        finally:
            self._release(srk)

    def _supports_aes_cfb(self) -> bool:
        return all(self._implements(alg) for alg in (tss.TPM2_ALG.AES, tss.TPM2_ALG.CFB))

    def _implements(self, alg: int) -> bool:
        # GetCapability(ALGS) lists implemented algorithms from the one asked for on.
        with tpm_step("listing the TPM's algorithms"):
            _, data = self._esapi.get_capability(tss.TPM2_CAP.ALGS, alg, 1)
        algorithms = data.data.algorithms
        return algorithms.count > 0 and int(algorithms.algProperties[0].alg) == int(alg)

    # -- the storage root key -------------------------------------------------------------

    def _create_srk(self) -> Handle:
        with tpm_step("creating the storage root key"):
            handle, *_ = self._esapi.create_primary(
                tss.TPM2B_SENSITIVE_CREATE(), srk_template(), tss.ESYS_TR.OWNER
            )
        return self._track(handle)

    @contextmanager
    def _parent(self, persistent_handle: int | None) -> Iterator[Handle]:
        """The parent for creating or loading a key: the persistent key at
        `persistent_handle`, or the standard SRK, released afterwards (swtpm has only
        three object slots)."""
        if persistent_handle is None:
            parent = self._create_srk()
        else:
            parent = self._open_persistent(persistent_handle, "parent key")
        try:
            yield parent
        finally:
            self._release(parent)
