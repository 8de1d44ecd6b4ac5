"""Software nodes for the load runs, and the server configurations that know them.

Every node is a `SoftwareTPM` (tests/unit/software_tpm.py) with its own P-256 EK: key
generation costs microseconds, so "a new node" is a new EK (a new EK hash, a new EK
certificate), which is what any per-node state in the server would be keyed on. Nodes
are known to the server three ways: an EK certificate from the trusted test CA (`cert`),
a file in a flat hash directory (`hash_path`), or an entry in a JSON document served
over HTTP (an `http` allowlist block). Others are not known at all: a certificate from a
CA the server does not trust.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from server_plugin.allowlist import AllowlistEntry
from server_plugin.allowlist.document import render_document
from spire_tpm_attestor.pb import attestation_pb2
from spire_tpm_attestor.testing.ca import TestCA
from tests.integration.http_servers import DocumentServer
from tests.integration.plugins import hcl, hcl_block
from tests.unit.software_tpm import SoftwareTPM


class Known(enum.Enum):
    CHAIN = "chain"  # an EK certificate from the trusted CA
    HASH_PATH = "allowlist"  # a file in the flat hash directory
    HTTP = "http"  # an entry of the served allowlist document (after `publish`)
    UNKNOWN = "unknown"  # an EK certificate from a CA the server does not trust

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Node:
    tpm: SoftwareTPM
    payload: bytes  # the agent's first message, serialized

    @property
    def pub_hash(self) -> str:
        return self.tpm.pub_hash

    def answer(self, challenge: bytes) -> bytes:
        decoded = attestation_pb2.Challenge.FromString(challenge)
        return self.tpm.answer(decoded).SerializeToString()


class Fleet:
    """The CAs, the allowlists and the nodes they know, under `directory`; `http` serves
    the allowlist document (started here, stopped by `close`)."""

    def __init__(self, directory: Path) -> None:
        self.ca = TestCA.create(directory / "ek-ca", name="Load")
        self.rogue_ca = TestCA.create(directory / "rogue-ca", name="Rogue")
        self.hash_path = directory / "hashes"
        self.hash_path.mkdir()
        self._served: list[AllowlistEntry] = []
        self.http = DocumentServer(body=render_document([]).encode()).start()

    def close(self) -> None:
        self.http.stop()

    def node(self, known: Known) -> Node:
        """A node never seen before, known to the server as `known` says."""
        tpm = SoftwareTPM()
        certificate = b""
        if known in (Known.CHAIN, Known.UNKNOWN):
            ca = self.ca if known is Known.CHAIN else self.rogue_ca
            issued = ca.issue_ek_certificate(tpm.ek_key.public_key())
            certificate = issued.public_bytes(serialization.Encoding.DER)
        elif known is Known.HASH_PATH:
            (self.hash_path / tpm.pub_hash).write_text('{"name": "load", "labels": {"rack": "r1"}}')
        elif known is Known.HTTP:
            self._served.append(AllowlistEntry(tpm.pub_hash, "load", {"rack": "r2"}))
        return Node(tpm, tpm.payload(ek_certificate=certificate).SerializeToString())

    def publish(self, revision: int = 0) -> None:
        """Serve the document with every HTTP node made so far, and one entry that names
        `revision`: a new revision is a new body (a new ETag), which the plugin's next
        refresh downloads and indexes again, at the same size."""
        marker = AllowlistEntry(bytes(32).hex(), f"revision-{revision}")
        self.http.body = render_document([*self._served, marker]).encode()

    def hcl(self, *known: Known, **options: object) -> str:
        """The configuration that admits the nodes known in these ways: `ek_policy`
        `cert`, `allowlist`, or `cert_or_allowlist` for both; `options` besides."""
        policy = "allowlist"
        if Known.CHAIN in known:
            policy = "cert" if set(known) == {Known.CHAIN} else "cert_or_allowlist"
            options["ek_ca_path"] = str(self.ca.bundle_path)
        if Known.HASH_PATH in known:
            options["hash_path"] = str(self.hash_path)
        text = hcl(ek_policy=policy, **options)
        if Known.HTTP in known:
            text += "\n" + hcl_block(
                "allowlist", "web", type="http", url=self.http.url, insecure_http=True,
                refresh_interval="1s",
            )  # fmt: skip
        return text
