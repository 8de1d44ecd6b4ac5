"""Server plugin configuration: one builder serves Configure and Validate."""

from __future__ import annotations

from dataclasses import dataclass

from spire_tpm_attestor.runtime.config import ConfigReader, CoreConfig, read_config

EK_POLICIES = ("cert", "allowlist", "cert_or_allowlist", "cert_and_allowlist")


@dataclass(frozen=True)
class ServerConfig:
    trust_domain: str
    ek_policy: str
    ek_ca_paths: list[str]
    hash_path: str | None
    agent_path_template: str | None
    can_reattest: bool

    def close(self) -> None:
        """Nothing to release yet."""


def _default_policy(has_ca: bool, has_allowlist: bool) -> str:
    if has_ca and has_allowlist:
        return "cert_or_allowlist"
    return "cert" if has_ca else "allowlist"


def _build(reader: ConfigReader, core: CoreConfig) -> ServerConfig:
    ek_ca_paths = reader.string_list("ek_ca_path")
    hash_path = reader.string("hash_path")
    policy = reader.choice("ek_policy", EK_POLICIES, None)
    if policy is None:
        policy = _default_policy(bool(ek_ca_paths), hash_path is not None)
    if "cert" in policy and not ek_ca_paths:
        reader.problem(f"ek_policy {policy!r} needs ek_ca_path (EK CA certificates)")
    if "allowlist" in policy and hash_path is None:
        reader.problem(f"ek_policy {policy!r} needs an allowlist (hash_path)")
    return ServerConfig(
        trust_domain=core.trust_domain,
        ek_policy=policy,
        ek_ca_paths=ek_ca_paths,
        hash_path=hash_path,
        agent_path_template=reader.string("agent_path_template"),
        can_reattest=reader.boolean("can_reattest", True),
    )


def build_server_config(hcl_text: str, core: CoreConfig) -> ServerConfig:
    return read_config(hcl_text, core, _build)
