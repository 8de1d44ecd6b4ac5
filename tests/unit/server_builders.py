"""The server's side of an in-process attestation: configuration, allowlists, CAs, verdicts.

`server_config` builds a `ServerConfig` directly (no files, no watchers, no HTTP), with
`Fixed` standing in for the reloading CA bundles and `MemoryAllowlist` for allowlist and
deny-list sources; `rejected` runs a step and returns the `Rejected` it raised, checking
the check's name and the status SPIRE would be told. The server-step tests import the
core's moving parts (CA bundles, the test CA) through this module only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from server_plugin.allowlist import AllowlistEntry, AllowlistError, AllowlistSource
from server_plugin.checks import Rejected
from server_plugin.config import ServerConfig
from server_plugin.evidence_config import DevIDOptions, EventLogOptions, PCROptions
from server_plugin.pcr_policy import PCRKey, PCRPolicy
from server_plugin.reload import Reloading
from spire_tpm_attestor.identity import DEFAULT_AGENT_PATH_TEMPLATE, AgentPathTemplate
from spire_tpm_attestor.runtime.status import PluginError
from spire_tpm_attestor.testing.ca import TestCA as TestCA  # the tests' one import of it
from spire_tpm_attestor.x509 import Certificate, load_ca_bundle

T = TypeVar("T")
Bundle = list[Certificate]


class Fixed(Generic[T]):
    """A `Reloading` that never reloads: the value a bundle or policy file holds now."""

    def __init__(self, value: T) -> None:
        self.value = value

    def close(self) -> None:
        pass


def fixed(value: T) -> Reloading[T]:
    return cast("Reloading[T]", Fixed(value))


@dataclass
class MemoryAllowlist(AllowlistSource):
    """An allowlist source in memory; with `failure` set, every lookup fails."""

    entries: dict[str, AllowlistEntry] = field(default_factory=dict)
    name: str = "memory"
    failure: str | None = None

    def _lookup(self, pub_hash: str) -> AllowlistEntry | None:
        if self.failure is not None:
            raise AllowlistError(self.failure)
        return self.entries.get(pub_hash)

    def describe(self) -> str:
        return "memory"


def listing(*pub_hashes: str, name: str | None = None, source: str = "memory") -> MemoryAllowlist:
    """A source that lists these EK hashes (each entry with `name`)."""
    return MemoryAllowlist(
        {pub_hash: AllowlistEntry(pub_hash, name=name, source=source) for pub_hash in pub_hashes}
    )


def broken(reason: str = "the source is unreachable") -> MemoryAllowlist:
    return MemoryAllowlist(failure=reason)


def bundle(ca: TestCA) -> Bundle:
    """The CA's root: what ek_ca_path / devid_ca_path would hold."""
    return load_ca_bundle(ca.root_path)


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def server_config(
    *,
    ek_policy: str = "cert",
    ek_ca: Bundle | None = None,
    allowlist: Sequence[AllowlistSource] = (),
    denylist: Sequence[AllowlistSource] = (),
    pcr_selection: Iterable[PCRKey] = (),
    pcr_policy: PCRPolicy | None = None,
    devid_ca: Bundle | None = None,
    require_devid: bool = False,
    agent_path_template: str = DEFAULT_AGENT_PATH_TEMPLATE,
    event_log: EventLogOptions | None = None,
) -> ServerConfig:
    """The configuration Configure would build, without reading or watching anything."""
    return ServerConfig(
        trust_domain="example.org",
        plugin_name="tpm",
        ek_policy=ek_policy,
        ek_ca=fixed(ek_ca) if ek_ca is not None else None,
        allowlist=list(allowlist),
        denylist=list(denylist),
        agent_path_template=AgentPathTemplate.parse(agent_path_template),
        can_reattest=True,
        pcr=PCROptions(frozenset(pcr_selection), pcr_policy),
        devid=DevIDOptions(fixed(devid_ca) if devid_ca is not None else None, require_devid),
        event_log=event_log,
    )


def rejected(
    check: str, status: type[PluginError], step: Callable[..., object], *args: object
) -> Rejected:
    """Run `step(*args)`, which must be rejected by `check` with `status`."""
    with pytest.raises(Rejected) as raised:
        step(*args)
    assert (raised.value.check, type(raised.value.error)) == (check, status), raised.value
    return raised.value
