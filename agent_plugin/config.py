"""Agent plugin configuration: one builder serves Configure and Validate."""

from __future__ import annotations

from dataclasses import dataclass

from spire_tpm_attestor.runtime.config import ConfigReader, CoreConfig, read_config

EK_ALGORITHMS = ("rsa2048", "ecc256", "ecc384")
AK_ALGORITHMS = ("rsa", "ecc")


def parse_handle(text: str) -> int:
    """A TPM persistent handle written as hex (0x81010001) or decimal."""
    try:
        handle = int(text, 0)
    except ValueError:
        raise ValueError(f"{text!r} is not a TPM handle (write it as 0x81xxxxxx)") from None
    if not 0x81000000 <= handle <= 0x81FFFFFF:
        raise ValueError(f"{text} is not a persistent handle (0x81000000-0x81ffffff)")
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

    def close(self) -> None:
        """Nothing to release: the agent opens the TPM per attestation."""


def _build(reader: ConfigReader, core: CoreConfig) -> AgentConfig:
    return AgentConfig(
        trust_domain=core.trust_domain,
        tcti=reader.string("tcti"),
        ek_algorithm=reader.choice("ek_algorithm", EK_ALGORITHMS, None),
        ek_handle=reader.parsed("ek_handle", parse_handle),
        ek_cert_path=reader.string("ek_cert_path"),
        ak_algorithm=reader.choice("ak_algorithm", AK_ALGORITHMS, "rsa") or "rsa",
        ak_handle=reader.parsed("ak_handle", parse_handle),
    )


def build_agent_config(hcl_text: str, core: CoreConfig) -> AgentConfig:
    return read_config(hcl_text, core, _build)
