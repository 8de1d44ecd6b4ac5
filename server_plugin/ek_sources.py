"""Certificates the agent could not send, fetched by the server: both off by default.

ek_aia_fetch {                          # an issuer missing from ek_ca_path and the payload
  allowed_hosts = ["pki.example-tpm-vendor.com"]   # from the certificate's AIA caIssuers
  timeout = "10s"
  max_size = 65536
  cache_path = "/var/lib/spire/tpm/aia-cache"      # by URL
}
ek_cert_download {                      # TPMs with no EK certificate in NV (Intel PTT, AMD fTPM)
  service_urls { intel = "https://ekop.intel.com/ekcertservice/" }   # default: Intel and AMD
  allowed_hosts = ["ekop.intel.com"]               # default: the two services' hosts
  cache_path = "/var/lib/spire/tpm/ek-cert-cache"  # by EK hash
  negative_cache = "5m"                            # how long "not published" is believed
}

What is fetched is only ever a candidate: an issuer joins a chain's intermediates (never
its anchors), a downloaded EK certificate is verified exactly as one from NV.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
from collections.abc import Callable

from server_plugin.web_fetch import (
    DiskCache,
    FetchSettings,
    NotPublished,
    WebFetcher,
    host_allowed,
)
from spire_tpm_attestor.ek_download import (
    DEFAULT_SERVICE_URLS,
    MANUFACTURERS,
    downloaded_ek_certificate,
    ek_certificate_url,
)
from spire_tpm_attestor.errors import AttestorError, MalformedInput, NotProven, SourceUnavailable
from spire_tpm_attestor.runtime.config import ConfigReader, Option, declare
from spire_tpm_attestor.tpm.structures import PublicArea
from spire_tpm_attestor.urls import http_hostname
from spire_tpm_attestor.x509 import Certificate, load_certificate
from spire_tpm_attestor.x509.issuers import ca_issuers_urls, issuer_certificates

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_SIZE = 64 * 1024
MAX_SIZE_LIMIT = 16 * 2**20
DEFAULT_NEGATIVE_CACHE = 300.0
_NEGATIVE_CACHE_PRUNE = 1024  # entries before expired ones are dropped


class AIAFetch:
    """Issuer certificates from the caIssuers URLs of a certificate, cached by URL."""

    def __init__(self, fetcher: WebFetcher, cache: DiskCache | None) -> None:
        self.fetcher = fetcher
        self.cache = cache

    def issuers(self, certificate: Certificate) -> list[Certificate]:
        """What the first working caIssuers URL serves; [] when the certificate names none."""
        failure: AttestorError | None = None
        for url in ca_issuers_urls(certificate):
            try:
                return self._issuers_at(url)
            except AttestorError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return []

    def _issuers_at(self, url: str) -> list[Certificate]:
        key = hashlib.sha256(url.encode()).hexdigest()
        cached = self.cache.get(key) if self.cache else None
        if cached is not None:
            try:
                return issuer_certificates(cached)
            except MalformedInput:
                pass  # fetched again below
        body = self.fetcher.get(url)
        try:
            certificates = issuer_certificates(body)
        except MalformedInput as exc:
            raise NotProven(f"{url} serves no usable certificate: {exc}") from None
        if self.cache:
            self.cache.put(key, body)
        return certificates

    def close(self) -> None:
        self.fetcher.close()


class EKCertDownload:
    """EK certificates from the manufacturers' services, cached by EK hash; "not
    published" is remembered for `negative_cache` seconds."""

    def __init__(
        self,
        service_urls: dict[str, str],
        fetcher: WebFetcher,
        cache: DiskCache | None,
        negative_cache: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service_urls = service_urls
        self.fetcher = fetcher
        self.cache = cache
        self.negative_cache = negative_cache
        self._clock = clock
        self._missing: dict[str, float] = {}  # EK hash -> until when
        self._lock = threading.Lock()

    def certificate(self, ek: PublicArea, pub_hash: str) -> Certificate | None:
        """The published certificate of this EK (from the cache, else downloaded), or None
        if no service has one. Raises SourceUnavailable if a service could not be asked
        and none had it."""
        cached = self.cache.get(f"{pub_hash}.der") if self.cache else None
        if cached is not None:
            try:
                return load_certificate(cached)
            except MalformedInput:
                pass  # downloaded again below
        with self._lock:
            if self._missing.get(pub_hash, 0.0) > self._clock():
                return None
        key = ek.public_key()
        unavailable: SourceUnavailable | None = None
        for manufacturer, base_url in self.service_urls.items():
            url = ek_certificate_url(manufacturer, base_url, key)
            try:
                body = self.fetcher.get(url)
            except NotPublished:
                continue
            except SourceUnavailable as exc:
                unavailable = unavailable or exc
                continue
            try:
                certificate = downloaded_ek_certificate(body)
            except MalformedInput as exc:
                raise NotProven(f"{url} serves no usable certificate: {exc}") from None
            return certificate
        if unavailable is not None:
            raise unavailable
        self._remember_missing(pub_hash)
        return None

    def keep(self, pub_hash: str, certificate: Certificate) -> None:
        """Cache a downloaded certificate once it verified (chain and EK binding): a
        wrong answer is never reused."""
        key = f"{pub_hash}.der"
        if self.cache and self.cache.get(key) != certificate.der:
            self.cache.put(key, certificate.der)

    def _remember_missing(self, pub_hash: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._missing) >= _NEGATIVE_CACHE_PRUNE:
                self._missing = {h: t for h, t in self._missing.items() if t > now}
            self._missing[pub_hash] = now + self.negative_cache

    def close(self) -> None:
        self.fetcher.close()


def _common_options(allowed_hosts: Option) -> tuple[Option, ...]:
    return (
        allowed_hosts,
        Option(
            "timeout",
            "duration",
            "the whole request, from connecting to the last byte",
            default=DEFAULT_TIMEOUT,
        ),
        Option(
            "max_size",
            "integer",
            f"largest answer accepted, in bytes (1..{MAX_SIZE_LIMIT})",
            default=DEFAULT_MAX_SIZE,
        ),
        Option(
            "cache_path",
            "string",
            "directory of cached answers, created when first written; written atomically; "
            "if it cannot be used the server works on without it and warns once",
            default_text="none: no cache",
        ),
        Option(
            "ca_path",
            "string",
            "PEM CA certificates for `https://` URLs",
            default_text="the system trust store",
        ),
    )


AIA_FETCH_OPTIONS = declare(
    *_common_options(
        Option(
            "allowed_hosts",
            "strings",
            "host names (no port) whose caIssuers URLs may be fetched; any other URL is "
            "never contacted",
            default_text="required",
        )
    )
)
SERVICE_URL_OPTIONS = declare(
    *(
        Option(m, "string", f"base URL of {m}'s EK certificate service", default=url)
        for m, url in DEFAULT_SERVICE_URLS.items()
    )
)
EK_CERT_DOWNLOAD_OPTIONS = declare(
    Option(
        "service_urls",
        "block",
        'the services to ask, in this order: `service_urls { intel = "https://..." }` '
        "(e.g. a mirror); each needs a host in `allowed_hosts`",
        default_text="Intel's and AMD's: "
        + ", ".join(f"`{url}`" for url in DEFAULT_SERVICE_URLS.values()),
    ),
    *_common_options(
        Option(
            "allowed_hosts",
            "strings",
            "host names (no port) that may be contacted",
            default_text="the hosts of `service_urls`",
        )
    ),
    Option(
        "negative_cache",
        "duration",
        'how long a service\'s "no certificate for this EK" (404) is believed, in memory',
        default=DEFAULT_NEGATIVE_CACHE,
    ),
)


def _fetch_settings(
    block: ConfigReader, option: str, default_hosts: list[str] | None = None
) -> FetchSettings:
    hosts = block.string_list("allowed_hosts") or default_hosts or []
    if not hosts:
        block.problem(f"{block.key('allowed_hosts')}: required: the hosts it may fetch from")
    ca_path = block.string("ca_path")
    tls: ssl.SSLContext | None = None
    if ca_path is not None:
        try:
            tls = ssl.create_default_context(cafile=ca_path)
        except (OSError, ssl.SSLError) as exc:
            block.problem(f"{block.key('ca_path')}: {exc}")
    return FetchSettings(
        option=option,
        allowed_hosts=frozenset(host.lower() for host in hosts),
        timeout=block.duration("timeout", minimum=0.001),
        max_size=block.integer("max_size", 1, MAX_SIZE_LIMIT),
        tls=tls,
    )


def _cache(block: ConfigReader, option: str) -> DiskCache | None:
    path = block.string("cache_path")
    return DiskCache(path, option) if path else None


def read_aia_fetch(reader: ConfigReader) -> AIAFetch | None:
    block = reader.block("ek_aia_fetch", AIA_FETCH_OPTIONS)
    if block is None:
        return None
    settings = _fetch_settings(block, "ek_aia_fetch")
    cache = _cache(block, "ek_aia_fetch")
    block.finish()
    return AIAFetch(WebFetcher(settings), cache)


def _service_urls(block: ConfigReader) -> dict[str, str]:
    services = block.block("service_urls", SERVICE_URL_OPTIONS)
    if services is None:
        return dict(DEFAULT_SERVICE_URLS)
    urls = {m: url for m in MANUFACTURERS if services.has(m) and (url := services.string(m))}
    services.finish()
    if not urls:
        block.problem(
            f"{block.key('service_urls')}: name at least one of {', '.join(MANUFACTURERS)}"
        )
    return urls


def read_ek_cert_download(reader: ConfigReader) -> EKCertDownload | None:
    block = reader.block("ek_cert_download", EK_CERT_DOWNLOAD_OPTIONS)
    if block is None:
        return None
    urls = _service_urls(block)
    default_hosts = sorted({host for url in urls.values() if (host := http_hostname(url))})
    settings = _fetch_settings(block, "ek_cert_download", default_hosts)
    for manufacturer, url in urls.items():
        if not host_allowed(url, settings.allowed_hosts):
            block.problem(
                f"{block.key('service_urls')}.{manufacturer}: {url!r} is not an http(s) URL "
                "on a host in allowed_hosts"
            )
    download = EKCertDownload(
        urls,
        WebFetcher(settings),
        _cache(block, "ek_cert_download"),
        block.duration("negative_cache", minimum=0.0),
    )
    block.finish()
    return download
