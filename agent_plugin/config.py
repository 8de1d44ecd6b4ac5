"""Agent plugin configuration: one builder serves Configure and Validate."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent_plugin.devid import DevIDFileError, DevIDKey, load_devid_key
from agent_plugin.event_log import (
    DEFAULT_EVENT_LOG_PATH,
    DEFAULT_MAX_EVENT_LOG_SIZE,
    MAX_EVENT_LOG_SIZE_LIMIT,
)
from agent_plugin.tpm.session import DEFAULT_TPM_TIMEOUT
from spire_tpm_attestor.runtime.config import (
    ConfigReader,
    CoreConfig,
    Option,
    declare,
    read_config,
)
from spire_tpm_attestor.runtime.observability import (
    OBSERVABILITY_OPTIONS,
    Observability,
    read_observability,
)
from spire_tpm_attestor.tpm.constants import PERSISTENT_FIRST, PERSISTENT_LAST

EK_ALGORITHMS = ("rsa2048", "ecc256", "ecc384", "rsa3072")
AK_ALGORITHMS = ("rsa", "ecc")
DEFAULT_AK_ALGORITHM = "rsa"

AGENT_OPTIONS = declare(
    Option(
        "tcti",
        "string",
        "how to reach the TPM: `device:/dev/...`, `swtpm:host=H,port=P`, `mssim:host=H,port=P`",
        default_text="`device:/dev/tpmrm0`, then `device:/dev/tpm0`",
    ),
    Option(
        "ek_algorithm",
        "string",
        "`rsa2048` (L-1, H-1), `ecc256` (L-2, H-2), `ecc384` (H-3) or `rsa3072` (H-6)",
        default_text="the type whose EK certificate is in NV, RSA first, low range first",
    ),
    Option(
        "ek_handle",
        "string",
        'persistent handle of an existing EK, e.g. `"0x81010001"`',
        default_text="none: the EK is created from the TCG default template",
    ),
    Option(
        "ek_cert_path",
        "string",
        "EK certificate file (PEM or DER), used when the TPM has none in NV",
    ),
    Option(
        "ak_algorithm",
        "string",
        "`rsa` (RSA 2048, RSASSA-SHA256) or `ecc` (P-256, ECDSA-SHA256)",
        default=DEFAULT_AK_ALGORITHM,
    ),
    Option(
        "ak_handle",
        "string",
        "persistent handle of an AK to reuse",
        default_text="none: a fresh AK per attestation",
    ),
    Option(
        "devid_cert_path",
        "string",
        "the DevID certificate (PEM): leaf first, then any intermediates",
        default_text="none: no DevID",
    ),
    Option(
        "devid_key_path",
        "string",
        "the DevID key as a TSS2 PEM private key (`-----BEGIN TSS2 PRIVATE KEY-----`); "
        "its parent is the standard SRK or the persistent key it names",
    ),
    Option(
        "devid_public_path",
        "string",
        "instead of `devid_key_path`, with `devid_private_path`: the key's TPM2B_PUBLIC "
        "blob (as `tpm2_create -u` writes it)",
    ),
    Option(
        "devid_private_path",
        "string",
        "instead of `devid_key_path`, with `devid_public_path`: the key's TPM2B_PRIVATE "
        "blob (as `tpm2_create -r` writes it)",
    ),
    Option(
        "devid_parent_handle",
        "string",
        'persistent parent of the blobs, e.g. `"0x81000001"`',
        default_text="the standard SRK",
    ),
    Option(
        "allow_unencrypted_sessions",
        "boolean",
        "attest with a TPM that offers no AES-128-CFB parameter encryption (see the threat "
        "model); without it such a TPM is refused",
        default=False,
    ),
    Option(
        "tpm_timeout",
        "duration",
        "longest wait for the TPM to answer one command; past it the attestation fails with "
        "`UNAVAILABLE` naming the command, and the session's objects are flushed when the "
        "TPM answers again",
        default=DEFAULT_TPM_TIMEOUT,
    ),
    Option(
        "event_log_path",
        "string",
        'the firmware event log, sent when the server asks for it; `""` sends none',
        default=DEFAULT_EVENT_LOG_PATH,
    ),
    Option(
        "max_event_log_size",
        "integer",
        f"bytes (1..{MAX_EVENT_LOG_SIZE_LIMIT}); a larger log is not sent, and the response "
        "says why",
        default=DEFAULT_MAX_EVENT_LOG_SIZE,
    ),
)


def parse_handle(text: str) -> int:
    """A TPM persistent handle written as hex (0x81010001) or decimal."""
    try:
        handle = int(text, 0)
    except ValueError:
        raise ValueError(f"{text!r} is not a TPM handle (write it as 0x81xxxxxx)") from None
    if not PERSISTENT_FIRST <= handle <= PERSISTENT_LAST:
        raise ValueError(
            f"{text} is not a persistent handle ({PERSISTENT_FIRST:#x}-{PERSISTENT_LAST:#x})"
        )
    return handle


@dataclass(frozen=True)
class AgentConfig:
    trust_domain: str
    tcti: str | None
    ek_algorithm: str | None
    ek_handle: int | None
    ek_cert_path: str | None
    ak_algorithm: str
    ak_handle: int | None
    devid: DevIDKey | None
    allow_unencrypted_sessions: bool
    event_log_path: str = DEFAULT_EVENT_LOG_PATH  # "" sends no event log
    max_event_log_size: int = DEFAULT_MAX_EVENT_LOG_SIZE
    tpm_timeout: float = DEFAULT_TPM_TIMEOUT
    observability: Observability = field(default_factory=Observability)

    def close(self) -> None:
        """Nothing to release: the agent opens the TPM per attestation."""


def _read_devid(reader: ConfigReader) -> DevIDKey | None:
    """The DevID chain and key, read (and checked against each other) at Configure."""
    cert_path = reader.string("devid_cert_path")
    key_path = reader.string("devid_key_path")
    public_path = reader.string("devid_public_path")
    private_path = reader.string("devid_private_path")
    parent_handle = reader.parsed("devid_parent_handle", parse_handle)
    if cert_path is None:
        if key_path or public_path or private_path:
            reader.problem("the devid_* key options need devid_cert_path (the DevID certificate)")
        return None
    if key_path is not None and (public_path or private_path or parent_handle):
        reader.problem(
            "devid_key_path (a TSS2 PEM key, which names its parent) excludes "
            "devid_public_path, devid_private_path and devid_parent_handle"
        )
        return None
    if key_path is None and not (public_path and private_path):
        reader.problem(
            "devid_cert_path needs devid_key_path, or devid_public_path with devid_private_path"
        )
        return None
    try:
        return load_devid_key(cert_path, key_path, public_path, private_path, parent_handle)
    except DevIDFileError as exc:
        reader.problem(f"DevID: {exc}")
        return None


def _build(reader: ConfigReader, core: CoreConfig) -> AgentConfig:
    return AgentConfig(
        trust_domain=core.trust_domain,
        tcti=reader.string("tcti"),
        ek_algorithm=reader.choice("ek_algorithm", EK_ALGORITHMS),
        ek_handle=reader.parsed("ek_handle", parse_handle),
        ek_cert_path=reader.string("ek_cert_path"),
        ak_algorithm=reader.choice("ak_algorithm", AK_ALGORITHMS) or DEFAULT_AK_ALGORITHM,
        ak_handle=reader.parsed("ak_handle", parse_handle),
        devid=_read_devid(reader),
        allow_unencrypted_sessions=reader.boolean("allow_unencrypted_sessions"),
        event_log_path=reader.string("event_log_path") or "",
        max_event_log_size=reader.integer("max_event_log_size", 1, MAX_EVENT_LOG_SIZE_LIMIT),
        tpm_timeout=reader.duration("tpm_timeout", minimum=0.001),
        observability=read_observability(reader),
    )


def build_agent_config(hcl_text: str, core: CoreConfig) -> AgentConfig:
    return read_config(hcl_text, core, {**AGENT_OPTIONS, **OBSERVABILITY_OPTIONS}, _build)
