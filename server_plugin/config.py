"""Server plugin configuration: one builder serves Configure and Validate."""

from __future__ import annotations

from dataclasses import dataclass

from server_plugin.allowlist import AllowlistSource
from server_plugin.allowlist.config import read_allowlist_sources
from server_plugin.ca_bundle import CABundle
from server_plugin.evidence_config import (
    DevIDOptions,
    PCROptions,
    read_devid_options,
    read_pcr_options,
)
from server_plugin.reload import Reloading
from spire_tpm_attestor.identity import (
    DEFAULT_AGENT_PATH_TEMPLATE,
    DEFAULT_PLUGIN_NAME,
    AgentPathTemplate,
)
from spire_tpm_attestor.runtime.config import (
    ConfigProblems,
    ConfigReader,
    CoreConfig,
    read_config,
)
from spire_tpm_attestor.x509 import Certificate

EK_POLICIES = ("cert", "allowlist", "cert_or_allowlist", "cert_and_allowlist")
DEFAULT_CHALLENGE_TIMEOUT = 60.0
DEFAULT_MAX_PENDING_CHALLENGES = 128
# Each attestation in progress holds one of the runtime's worker threads; keep headroom
# for Configure, Shutdown and go-plugin's own streams.
MAX_PENDING_CHALLENGES_LIMIT = 192


@dataclass(frozen=True)
class ServerConfig:
    trust_domain: str
    plugin_name: str
    ek_policy: str
    ek_ca: Reloading[list[Certificate]] | None
    allowlist: list[AllowlistSource]
    denylist: list[AllowlistSource]
    agent_path_template: AgentPathTemplate
    can_reattest: bool
    pcr: PCROptions
    devid: DevIDOptions
    challenge_timeout: float = DEFAULT_CHALLENGE_TIMEOUT  # seconds to wait for each message
    max_pending_challenges: int = DEFAULT_MAX_PENDING_CHALLENGES

    @property
    def ek_ca_bundle(self) -> list[Certificate]:
        """The EK CA certificates as last (re)loaded from ek_ca_path."""
        return self.ek_ca.value if self.ek_ca is not None else []

    def start(self) -> None:
        """Starts the allowlist watchers and HTTP refreshes: for the configuration that
        Configure commits only, never one that is validated or rejected."""
        for source in [*self.allowlist, *self.denylist]:
            source.start()

    def close(self) -> None:
        if self.ek_ca is not None:
            self.ek_ca.close()
        for source in [*self.allowlist, *self.denylist]:
            source.close()
        self.pcr.close()
        self.devid.close()


def _default_policy(has_ca: bool, has_allowlist: bool) -> str:
    if has_ca and has_allowlist:
        return "cert_or_allowlist"
    return "cert" if has_ca else "allowlist"


def reloading_ca_bundle(
    reader: ConfigReader, option: str, paths: list[str]
) -> Reloading[list[Certificate]] | None:
    """The CA bundle in `paths`, reloaded when they change; None (and problems) if unusable.

    A path that is missing or holds no certificates is a problem here; removed later, it
    is simply no longer trusted (see ca_bundle)."""
    if not paths:
        return None
    try:
        return Reloading(option, paths, CABundle(option, paths))
    except ConfigProblems as problems:
        for problem in problems.problems:
            reader.problem(problem)
        return None


def _build(reader: ConfigReader, core: CoreConfig) -> ServerConfig:
    ca_paths = reader.string_list("ek_ca_path")
    ek_ca = reloading_ca_bundle(reader, "ek_ca_path", ca_paths)
    sources, denylist = read_allowlist_sources(reader)
    policy = reader.choice("ek_policy", EK_POLICIES, None)
    if policy is None:
        if not ca_paths and not sources:
            reader.problem("configure ek_ca_path (EK CA certificates), an allowlist, or both")
        policy = _default_policy(bool(ca_paths), bool(sources))
    if "cert" in policy and not ca_paths:
        reader.problem(f"ek_policy {policy!r} needs ek_ca_path (EK CA certificates)")
    if "allowlist" in policy and not sources:
        reader.problem(f"ek_policy {policy!r} needs an allowlist (hash_path or allowlist blocks)")
    template_text = reader.string("agent_path_template", DEFAULT_AGENT_PATH_TEMPLATE)
    try:
        template = AgentPathTemplate.parse(template_text or DEFAULT_AGENT_PATH_TEMPLATE)
    except ValueError as exc:
        reader.problem(f"agent_path_template: {exc}")
        template = AgentPathTemplate(DEFAULT_AGENT_PATH_TEMPLATE)
    if "Name" in template.fields() and not sources:
        reader.problem("agent_path_template uses .Name, which needs an allowlist")
    return ServerConfig(
        trust_domain=core.trust_domain,
        plugin_name=reader.string("plugin_name", DEFAULT_PLUGIN_NAME) or DEFAULT_PLUGIN_NAME,
        ek_policy=policy,
        ek_ca=ek_ca,
        allowlist=sources,
        denylist=denylist,
        agent_path_template=template,
        can_reattest=reader.boolean("can_reattest", True),
        pcr=read_pcr_options(reader),
        devid=read_devid_options(
            reader,
            template,
            reloading_ca_bundle(reader, "devid_ca_path", reader.string_list("devid_ca_path")),
        ),
        challenge_timeout=reader.duration(
            "challenge_timeout", DEFAULT_CHALLENGE_TIMEOUT, minimum=0.001
        ),
        max_pending_challenges=reader.integer(
            "max_pending_challenges",
            DEFAULT_MAX_PENDING_CHALLENGES,
            1,
            MAX_PENDING_CHALLENGES_LIMIT,
        )
        or DEFAULT_MAX_PENDING_CHALLENGES,
    )


def build_server_config(hcl_text: str, core: CoreConfig) -> ServerConfig:
    return read_config(hcl_text, core, _build)
