"""Server plugin configuration: one builder serves Configure and Validate."""

from __future__ import annotations

from dataclasses import dataclass, field

from server_plugin.allowlist import AllowlistSource
from server_plugin.allowlist.config import read_allowlist_sources
from server_plugin.ca_bundle import CABundle
from server_plugin.ek_sources import (
    AIAFetch,
    EKCertDownload,
    read_aia_fetch,
    read_ek_cert_download,
)
from server_plugin.evidence_config import (
    DevIDOptions,
    EventLogOptions,
    PCROptions,
    read_devid_options,
    read_event_log_options,
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
    Option,
    declare,
    read_config,
)
from spire_tpm_attestor.runtime.observability import (
    OBSERVABILITY_OPTIONS,
    Observability,
    read_observability,
)
from spire_tpm_attestor.x509 import Certificate

EK_POLICIES = ("cert", "allowlist", "cert_or_allowlist", "cert_and_allowlist")
# The policies under which an allowlist entry alone admits.
ALLOWLIST_SUFFICES = ("allowlist", "cert_or_allowlist")
EK_CERT_EXPIRY = ("enforce", "ignore")
DEFAULT_CHALLENGE_TIMEOUT = 60.0
# A waiting attestation holds no thread, only memory: about 21 KiB of RSS for a stream
# that says nothing, 15 KiB for one holding an unanswered challenge (make
# bench-process, 1,000 silent streams). The default bounds what silent peers can hold to
# about 45 MiB; the limit to about 1.4 GiB.
DEFAULT_MAX_PENDING_CHALLENGES = 2048
MAX_PENDING_CHALLENGES_LIMIT = 65536

SERVER_OPTIONS = declare(
    Option(
        "ek_policy",
        "string",
        ", ".join(f"`{policy}`" for policy in EK_POLICIES),
        default_text="`cert_or_allowlist` when both are configured, else the one configured",
    ),
    Option(
        "ek_ca_path",
        "strings",
        "a file or directory of PEM/DER CA certificates (roots and intermediates), or a list "
        "of them; reloaded when they change. Every certificate in it is a trust anchor, "
        "self-signed or not; directories are read recursively (hidden entries skipped); a "
        "file or certificate that cannot be used is skipped with a warning (see [CA bundles]"
        "(#ca-bundles))",
    ),
    Option(
        "ek_cert_expiry",
        "string",
        "`enforce` or `ignore`: whether an EK certificate, or a CA certificate of its chain, "
        "past its notAfter still counts. Manufacturers certify EKs for the life of the part, "
        "and many such certificates have expired; `ignore` accepts them (notBefore and every "
        "signature are still checked)",
        default="enforce",
    ),
    Option(
        "hash_path",
        "string",
        "flat-directory allowlist: one file per EK hash (see below); consulted first",
    ),
    Option(
        "allowlist",
        "blocks",
        "more allowlist sources (bucketed directory, JSON document file, HTTP(S) endpoint), "
        "consulted in the order written; see [Allowlists at fleet scale]"
        "(#allowlists-at-fleet-scale)",
    ),
    Option(
        "denylist",
        "blocks",
        "deny lists, of the same kinds; a listed EK is refused under every policy",
    ),
    Option(
        "agent_path_template",
        "string",
        "the agent ID path below `/spire/agent/`",
        default=DEFAULT_AGENT_PATH_TEMPLATE,
    ),
    Option(
        "plugin_name",
        "string",
        "the name given to the plugin in server.conf (SPIRE does not tell plugins their "
        "name); used for `.PluginName`",
        default=DEFAULT_PLUGIN_NAME,
    ),
    Option(
        "can_reattest",
        "boolean",
        "whether agents re-attest instead of renewing (safe when TPM access is root-only)",
        default=True,
    ),
    Option(
        "pcr_selection",
        "block",
        "PCRs to quote, by bank: `pcr_selection { sha256 = [0, 1, 2, 3, 4, 5, 6, 7] }`",
        default_text="none: no quote",
    ),
    Option("pcr_policy", "block", "allowed PCR values (see below); its PCRs are quoted too"),
    Option(
        "pcr_policy_path",
        "string",
        "the same policy in an HCL or JSON file, reloaded when it changes; excludes `pcr_policy`",
    ),
    Option(
        "event_log",
        "block",
        "ask agents for the firmware event log and replay it against a quote of sha256 PCRs "
        "0-7 (`event_log = true`), or against the PCRs a block names: "
        "`event_log { pcr_selection { sha256 = [0, 2, 4, 7] } }`; see [Measured boot]"
        "(#measured-boot-the-firmware-event-log)",
        default_text="`false`",
    ),
    Option(
        "event_log_policy_path",
        "string",
        "what the measured boot must show, in an HCL or JSON file, reloaded when it "
        "changes; asks for the event log too",
    ),
    Option(
        "devid_ca_path",
        "strings",
        "a file or directory of DevID CA certificates, or a list of them; reloaded when "
        "they change",
        default_text="none: DevIDs are ignored",
    ),
    Option(
        "require_devid",
        "boolean",
        "admit only agents that prove a DevID (needs `devid_ca_path`)",
        default=False,
    ),
    Option(
        "challenge_timeout",
        "duration",
        "how long a stream may wait for the payload, then for the answer to its challenge; "
        "past it the stream ends with `DEADLINE_EXCEEDED` (audit check `challenge_timeout`)",
        default=DEFAULT_CHALLENGE_TIMEOUT,
    ),
    Option(
        "max_pending_challenges",
        "integer",
        f"attestations in progress at once (1..{MAX_PENDING_CHALLENGES_LIMIT}), from the "
        "stream's start until the agent's answer arrives; a waiting stream holds no thread, "
        "only about 15 to 21 KiB of memory, so this bounds what silent peers can hold (≈45 MiB "
        "at the default); beyond it a stream is refused at once with `UNAVAILABLE` "
        '"too many attestations in progress"',
        default=DEFAULT_MAX_PENDING_CHALLENGES,
    ),
    Option(
        "ek_aia_fetch",
        "block",
        "fetch an EK chain's missing issuer from the AIA caIssuers URL of the certificate "
        "above it (options below); see [Chains that NV does not complete]"
        "(#chains-that-nv-does-not-complete)",
        default_text="none: nothing fetched",
    ),
    Option(
        "ek_cert_download",
        "block",
        "download the EK certificate of a TPM that holds none (Intel PTT, AMD fTPM) from "
        "its manufacturer (options below); see [Chains that NV does not complete]"
        "(#chains-that-nv-does-not-complete)",
        default_text="none: nothing downloaded",
    ),
)


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
    event_log: EventLogOptions | None = None  # None: agents are not asked for the log
    challenge_timeout: float = DEFAULT_CHALLENGE_TIMEOUT  # seconds to wait for each message
    max_pending_challenges: int = DEFAULT_MAX_PENDING_CHALLENGES
    ek_aia_fetch: AIAFetch | None = None
    ek_cert_download: EKCertDownload | None = None
    enforce_ek_cert_expiry: bool = True  # ek_cert_expiry: EK and EK CA certificates alike
    notes: tuple[str, ...] = ()  # what Validate reports about an accepted configuration
    observability: Observability = field(default_factory=Observability)

    @property
    def ek_ca_bundle(self) -> list[Certificate]:
        """The EK CA certificates as last (re)loaded from ek_ca_path."""
        return self.ek_ca.value if self.ek_ca is not None else []

    @property
    def payload_check_waits(self) -> bool:
        """Whether a payload check may wait on I/O: a certificate fetched over the network
        (AIA, EK certificate download) or an allowlist or deny-list entry read from storage."""
        fetches = self.ek_aia_fetch is not None or self.ek_cert_download is not None
        return fetches or any(source.lookup_reads_storage for source in self.sources())

    @property
    def answer_check_waits(self) -> bool:
        """Whether checking the answer may wait on storage (the deny lists, consulted again)."""
        return any(source.lookup_reads_storage for source in self.denylist)

    def sources(self) -> list[AllowlistSource]:
        """Every allowlist and deny-list source, in the order they are consulted."""
        return [*self.allowlist, *self.denylist]

    def ca_bundles(self) -> list[tuple[str, CABundle]]:
        """(option, bundle) for each CA path option configured."""
        bundles = [("ek_ca_path", self.ek_ca), ("devid_ca_path", self.devid.bundle)]
        return [
            (option, reloading.loader)
            for option, reloading in bundles
            if reloading is not None and isinstance(reloading.loader, CABundle)
        ]

    def start(self) -> None:
        """Starts the file watchers (CA bundles, PCR and event log policies, allowlists)
        and HTTP refreshes: for the configuration that Configure commits only, never one
        that is validated or rejected."""
        if self.ek_ca is not None:
            self.ek_ca.start()
        for source in self.sources():
            source.start()
        self.pcr.start()
        self.devid.start()
        if self.event_log is not None:
            self.event_log.start()

    def close(self) -> None:
        if self.ek_ca is not None:
            self.ek_ca.close()
        for source in self.sources():
            source.close()
        self.pcr.close()
        self.devid.close()
        for fetching in (self.ek_aia_fetch, self.ek_cert_download):
            if fetching is not None:
                fetching.close()
        if self.event_log is not None:
            self.event_log.close()


def _default_policy(has_ca: bool, has_allowlist: bool) -> str:
    if has_ca and has_allowlist:
        return "cert_or_allowlist"
    return "cert" if has_ca else "allowlist"


def reloading_ca_bundle(
    reader: ConfigReader, option: str, paths: list[str]
) -> Reloading[list[Certificate]] | None:
    """The CA bundle in `paths`, reloaded when they change once started; None (and
    problems) if unusable.

    Paths that hold no usable certificate at all are a problem here; a file or
    certificate that cannot be used is skipped, with a note. Removed later, a path is
    simply no longer trusted (see ca_bundle)."""
    if not paths:
        return None
    bundle = CABundle(option, paths)
    try:
        reloading = Reloading(option, paths, bundle)
    except ConfigProblems as problems:
        for problem in problems.problems:
            reader.problem(problem)
        return None
    for skipped in bundle.skipped:
        reader.note(f"{option}: skipped {skipped.path}: {skipped.reason}")
    return reloading


def _build(reader: ConfigReader, core: CoreConfig) -> ServerConfig:
    ca_paths = reader.string_list("ek_ca_path")
    ek_ca = reloading_ca_bundle(reader, "ek_ca_path", ca_paths)
    sources, denylist = read_allowlist_sources(reader)
    policy = reader.choice("ek_policy", EK_POLICIES)
    if policy is None:
        if not ca_paths and not sources:
            reader.problem("configure ek_ca_path (EK CA certificates), an allowlist, or both")
        policy = _default_policy(bool(ca_paths), bool(sources))
    if "cert" in policy and not ca_paths:
        reader.problem(f"ek_policy {policy!r} needs ek_ca_path (EK CA certificates)")
    if "allowlist" in policy and not sources:
        reader.problem(f"ek_policy {policy!r} needs an allowlist (hash_path or allowlist blocks)")
    template_text = reader.string("agent_path_template") or DEFAULT_AGENT_PATH_TEMPLATE
    try:
        template = AgentPathTemplate.parse(template_text)
    except ValueError as exc:
        reader.problem(f"agent_path_template: {exc}")
        template = AgentPathTemplate(DEFAULT_AGENT_PATH_TEMPLATE)
    if "Name" in template.fields() and not sources:
        reader.problem("agent_path_template uses .Name, which needs an allowlist")
    aia_fetch, cert_download = read_aia_fetch(reader), read_ek_cert_download(reader)
    for option, value in (("ek_aia_fetch", aia_fetch), ("ek_cert_download", cert_download)):
        if value is not None and "cert" not in policy:
            reader.problem(f"{option} needs an ek_policy that checks EK certificates")
    return ServerConfig(
        trust_domain=core.trust_domain,
        plugin_name=reader.string("plugin_name") or DEFAULT_PLUGIN_NAME,
        ek_policy=policy,
        ek_ca=ek_ca,
        allowlist=sources,
        denylist=denylist,
        agent_path_template=template,
        can_reattest=reader.boolean("can_reattest"),
        pcr=read_pcr_options(reader),
        event_log=read_event_log_options(reader),
        devid=read_devid_options(
            reader,
            template,
            reloading_ca_bundle(reader, "devid_ca_path", reader.string_list("devid_ca_path")),
        ),
        challenge_timeout=reader.duration("challenge_timeout", minimum=0.001),
        max_pending_challenges=reader.integer(
            "max_pending_challenges", 1, MAX_PENDING_CHALLENGES_LIMIT
        ),
        ek_aia_fetch=aia_fetch,
        ek_cert_download=cert_download,
        enforce_ek_cert_expiry=reader.choice("ek_cert_expiry", EK_CERT_EXPIRY) == "enforce",
        notes=tuple(reader.notes),
        observability=read_observability(reader),
    )


def build_server_config(hcl_text: str, core: CoreConfig) -> ServerConfig:
    return read_config(hcl_text, core, {**SERVER_OPTIONS, **OBSERVABILITY_OPTIONS}, _build)
