"""Reading the allowlist and deny-list sources out of the server configuration.

hash_path = "/var/lib/spire/tpm/hashes"       # a flat directory, consulted first
allowlist "racks" {                            # then each block, in order
  type = "bucketed_directory"                  # directory | bucketed_directory | file | http
  path = "/var/lib/spire/tpm/allowlist"
}
denylist "revoked" {                           # any kind; beats every allow
  type = "file"
  path = "/etc/spire/tpm/revoked.json"
}
"""

from __future__ import annotations

import ssl

from server_plugin.allowlist.base import AllowlistSource
from server_plugin.allowlist.directory import (
    BucketedDirectory,
    DirectorySource,
    FlatDirectory,
    check_directory,
)
from server_plugin.allowlist.document import DocumentError
from server_plugin.allowlist.file import DocumentFile
from server_plugin.allowlist.http import HTTPAllowlist, HTTPSettings
from spire_tpm_attestor.files import FileTooLarge
from spire_tpm_attestor.runtime.config import ConfigReader, Option, Options, declare
from spire_tpm_attestor.urls import split_url

SOURCE_TYPES = ("directory", "bucketed_directory", "file", "http")
DIRECTORY_TYPES: dict[str, type[DirectorySource]] = {
    "directory": FlatDirectory,
    "bucketed_directory": BucketedDirectory,
}
DEFAULTS = HTTPSettings(url="")

# What every allowlist/denylist block holds first; its type decides the rest.
SOURCE_OPTIONS = declare(
    Option(
        "type",
        "string",
        ", ".join(f"`{kind}`" for kind in SOURCE_TYPES),
        default_text="required",
    ),
)
PATH_OPTIONS = declare(
    Option("path", "string", "the directory, or the document file", default_text="required"),
)
HTTP_OPTIONS = declare(
    Option(
        "url",
        "string",
        "`https://...`; `http://` only with `insecure_http`",
        default_text="required",
    ),
    Option(
        "insecure_http",
        "boolean",
        "allow a plain `http://` url (no TLS options or token then), e.g. a sidecar on "
        "loopback: anyone on the path could otherwise rewrite the list, mapping their EK to "
        "any name and labels or taking an EK off a deny list",
        default=False,
    ),
    Option(
        "ca_path",
        "string",
        "PEM CA certificates that sign the server's certificate",
        default_text="the system trust store",
    ),
    Option(
        "client_certificate_path",
        "string",
        "a client certificate (PEM), with `client_key_path`, for servers that require one",
    ),
    Option("client_key_path", "string", "the key of `client_certificate_path` (PEM)"),
    Option(
        "bearer_token_path",
        "string",
        "a file holding a token sent as `Authorization: Bearer <token>`",
    ),
    Option(
        "refresh_interval",
        "duration",
        "time between fetches, ±10% jitter so servers do not fetch in step; after a failed "
        "fetch, retried within `30s`",
        default=DEFAULTS.refresh_interval,
    ),
    Option(
        "max_staleness",
        "duration",
        "how long the last good copy is used while the endpoint fails; then lookups fail "
        "closed with `UNAVAILABLE`; at least `refresh_interval`",
        default=DEFAULTS.max_staleness,
    ),
    Option(
        "connect_timeout",
        "duration",
        "TCP and TLS connection",
        default=DEFAULTS.connect_timeout,
    ),
    Option(
        "read_timeout",
        "duration",
        "longest wait for the next bytes of the response",
        default=DEFAULTS.read_timeout,
    ),
    Option(
        "fetch_timeout",
        "duration",
        "longest a whole fetch may take, from connecting to the last byte; a slower one "
        "(a body trickled byte by byte) fails the refresh",
        default=DEFAULTS.fetch_timeout,
    ),
    Option(
        "max_body_bytes",
        "integer",
        "larger bodies (after decompression) are refused",
        default=DEFAULTS.max_body_bytes,
    ),
)
OPTIONS_BY_TYPE: dict[str, Options] = {
    "directory": PATH_OPTIONS,
    "bucketed_directory": PATH_OPTIONS,
    "file": PATH_OPTIONS,
    "http": HTTP_OPTIONS,
}


def read_allowlist_sources(
    reader: ConfigReader,
) -> tuple[list[AllowlistSource], list[AllowlistSource]]:
    """(allow sources, deny sources), each in the order they are consulted."""
    allow: list[AllowlistSource] = []
    hash_path = reader.string("hash_path")
    if hash_path is not None:
        problem = check_directory(hash_path)
        if problem:
            reader.problem(f"hash_path: {problem}")
        allow.append(FlatDirectory(hash_path, "hash_path"))
    allow.extend(_sources(reader, "allowlist"))
    return allow, _sources(reader, "denylist")


def _sources(reader: ConfigReader, kind: str) -> list[AllowlistSource]:
    sources: list[AllowlistSource] = []
    for label, block in reader.labeled_blocks(kind, SOURCE_OPTIONS):
        source_type = block.choice("type", SOURCE_TYPES)
        if source_type is None:
            if not block.has("type"):
                block.problem(f"{block.key('type')}: required, one of {', '.join(SOURCE_TYPES)}")
            continue  # the other options cannot be judged without the type
        block = block.declaring(OPTIONS_BY_TYPE[source_type])
        name = f'{kind} "{label}"'
        source = (
            _http_source(block, name)
            if source_type == "http"
            else _path_source(block, name, source_type)
        )
        block.finish()
        if source is not None:
            sources.append(source)
    return sources


def _path_source(block: ConfigReader, name: str, source_type: str) -> AllowlistSource | None:
    path = block.string("path")
    if path is None:
        block.problem(f"{block.key('path')}: required for type {source_type!r}")
        return None
    if source_type == "file":
        try:
            return DocumentFile(path, name)
        except DocumentError as exc:
            block.problem(f"{block.key('path')}: {exc}")
            return None
    problem = check_directory(path)
    if problem:
        block.problem(f"{block.key('path')}: {problem}")
    return DIRECTORY_TYPES[source_type](path, name)


def _http_source(block: ConfigReader, name: str) -> AllowlistSource | None:
    url = block.string("url")
    settings = HTTPSettings(
        url=url or "",
        ca_path=block.string("ca_path"),
        client_certificate_path=block.string("client_certificate_path"),
        client_key_path=block.string("client_key_path"),
        bearer_token_path=block.string("bearer_token_path"),
        refresh_interval=block.duration("refresh_interval", minimum=0.01),
        max_staleness=block.duration("max_staleness", minimum=0.01),
        connect_timeout=block.duration("connect_timeout", minimum=0.01),
        read_timeout=block.duration("read_timeout", minimum=0.01),
        fetch_timeout=block.duration("fetch_timeout", minimum=0.01),
        max_body_bytes=block.integer("max_body_bytes", minimum=1),
    )
    insecure_http = block.boolean("insecure_http")
    problems = (
        _http_problems(settings, insecure_http)
        if url is not None
        else [("url", "required for type 'http'")]
    )
    for option, problem in problems:
        block.problem(f"{block.key(option)}: {problem}")
    if problems:
        return None
    try:
        return HTTPAllowlist(name, settings)
    except (OSError, ssl.SSLError, ValueError, FileTooLarge) as exc:
        block.problem(f"{name}: TLS material or bearer token unusable: {exc}")
        return None


def _http_problems(settings: HTTPSettings, insecure_http: bool) -> list[tuple[str, str]]:
    """(option, problem) pairs; HTTPAllowlist itself loads the TLS files and token."""
    parts = split_url(settings.url)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return [("url", f"{settings.url!r} is not an http:// or https:// URL")]
    problems: list[tuple[str, str]] = []
    if parts.scheme == "https" and insecure_http:
        problems.append(("insecure_http", "only applies to an http:// url"))
    if parts.scheme == "http" and not insecure_http:
        # Anyone on the path could rewrite the list: map their EK to any name and labels,
        # or drop an EK from a deny list. Plain HTTP must be asked for by name.
        problems.append(
            (
                "url",
                "is plain http://, which anyone on the network can rewrite; use "
                "https://, or set insecure_http = true (e.g. for a loopback sidecar)",
            )
        )
    if parts.scheme == "http":
        # Secrets and TLS options on a plain-text URL are a mistake, not a preference.
        for option, value in (
            ("ca_path", settings.ca_path),
            ("client_certificate_path", settings.client_certificate_path),
            ("bearer_token_path", settings.bearer_token_path),
        ):
            if value:
                problems.append((option, "needs an https:// url"))
    if bool(settings.client_certificate_path) != bool(settings.client_key_path):
        problems.append(
            ("client_key_path", "client_certificate_path and client_key_path go together")
        )
    if settings.max_staleness < settings.refresh_interval:
        problems.append(("max_staleness", "must be at least refresh_interval"))
    return problems
