"""The server plugin's metrics (declared here, exported only when telemetry is on; see
spire_tpm_attestor.runtime.metrics). Prefixed `spire_tpm_attestor_` when exported."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from spire_tpm_attestor.runtime.metrics import Counter, Histogram, Sampled, Samples

if TYPE_CHECKING:
    from server_plugin.config import ServerConfig

ATTESTATIONS = Counter(
    "attestations_total",
    "Attestation decisions, by decision (admitted, rejected) and the check that decided "
    "(empty when admitted), as in the audit line",
    ("decision", "check"),
)
ATTESTATION_SECONDS = Histogram(
    "attestation_seconds",
    "From the stream's start to its decision, the agent's round trip included",
    ("decision",),
)
PENDING_CHALLENGES = Sampled(
    "pending_challenges",
    "Attestations in progress, counted against max_pending_challenges",
)
ALLOWLIST_ENTRIES = Sampled(
    "allowlist_entries",
    "Entries in the copy of each allowlist or deny list held in memory (HTTP and file "
    "sources; directories are read per lookup)",
    ("source",),
)
ALLOWLIST_COPY_AGE = Sampled(
    "allowlist_copy_age_seconds",
    "Seconds since an HTTP source's copy was last confirmed by its endpoint; lookups fail "
    "closed past its max_staleness",
    ("source",),
)
ALLOWLIST_MAX_STALENESS = Sampled(
    "allowlist_max_staleness_seconds",
    "Each HTTP source's max_staleness, to compare allowlist_copy_age_seconds with",
    ("source",),
)
ALLOWLIST_REFRESH_FAILURES = Counter(
    "allowlist_refresh_failures_total",
    "Failed refreshes of HTTP sources, by reason: connection, timeout, tls, http_status, "
    "too_large, document, unexpected",
    ("source", "reason"),
)
CA_CERTIFICATES = Sampled(
    "ca_certificates",
    "Certificates of each CA path (ek_ca_path, devid_ca_path) in use (state=loaded), "
    "or left out because they did not load (state=skipped)",
    ("option", "path", "state"),
)


def sample_from(current: Callable[[], ServerConfig | None], pending: Callable[[], int]) -> None:
    """Read the sampled gauges from the configuration in force and the pending count."""
    PENDING_CHALLENGES.sample_with(lambda: [((), pending())])
    ALLOWLIST_ENTRIES.sample_with(lambda: _sources(current(), "entries"))
    ALLOWLIST_COPY_AGE.sample_with(lambda: _sources(current(), "copy_age"))
    ALLOWLIST_MAX_STALENESS.sample_with(lambda: _sources(current(), "max_staleness"))
    CA_CERTIFICATES.sample_with(lambda: _ca_certificates(current()))


def _sources(config: ServerConfig | None, reading: str) -> Samples:
    if config is None:
        return []
    readings = ((source.name, getattr(source.health(), reading)) for source in config.sources())
    return [((name,), float(value)) for name, value in readings if value is not None]


def _ca_certificates(config: ServerConfig | None) -> Samples:
    if config is None:
        return []
    samples: list[tuple[tuple[str, ...], float]] = []
    for option, bundle in config.ca_bundles():
        for path, loaded, skipped in bundle.counts():
            samples.append(((option, path, "loaded"), loaded))
            samples.append(((option, path, "skipped"), skipped))
    return samples
