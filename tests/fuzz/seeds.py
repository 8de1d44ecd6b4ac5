"""The corpus seeds, made from the test vectors and the tests' builders
(`python -m tests.fuzz seed` writes them to tests/fuzz/corpus/<target>/).

Each seed reaches deep into its target: the payload seeds pass every check up to the
challenge, the response seeds are admitted, the certificates chain.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from tests.fuzz import targets
from tests.fuzz.targets import NONCE, SECRET, VECTORS, vector

CORPUS = Path(__file__).parent / "corpus"
Seed = tuple[str, bytes]  # (target, input)


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


def _spki(tpm2b_public: bytes) -> bytes:
    from spire_tpm_attestor.tpm.structures import parse_tpm2b_public

    key = parse_tpm2b_public(tpm2b_public).public_key()
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pem_der(path: Path) -> bytes:
    from spire_tpm_attestor.x509 import certificate_der

    return certificate_der(path.read_bytes())


def payload_seeds() -> Iterator[bytes]:
    from spire_tpm_attestor import wire

    ek = vector("swtpm_ek.json")
    intermediate = _pem_der(VECTORS / "swtpm_localca_intermediate.pem")
    rsa_ak = vector("swtpm_ak_rsa.json")
    devid_public = _hex(rsa_ak["certify"]["certified_public"])
    devid_leaf = targets.devid_certificate(_spki(devid_public))
    yield wire.encode(
        wire.Payload(
            version=1,
            ek_public=_hex(ek["rsa2048"]["ek_public"]),
            ek_certificate=_hex(ek["rsa2048"]["ek_certificate"]),
            ek_intermediates=[intermediate],
            ak_public=_hex(rsa_ak["ak_public"]),
            devid_certificates=[devid_leaf],
            devid_public=devid_public,
        )
    )
    # Listed in the allowlist, no certificate.
    yield wire.encode(
        wire.Payload(
            version=1,
            ek_public=_hex(ek["ecc256"]["ek_public"]),
            ak_public=_hex(vector("swtpm_ak_ecc.json")["ak_public"]),
        )
    )
    yield wire.encode(
        wire.Payload(
            version=1,
            ek_public=_hex(ek["ecc384"]["ek_public"]),
            ek_certificate=_hex(ek["ecc384"]["ek_certificate"]),
            ek_intermediates=[intermediate],
            ak_public=_hex(vector("swtpm_ak_ecc384.json")["ak_public"]),
        )
    )


def response_seeds() -> Iterator[bytes]:
    from spire_tpm_attestor import wire
    from spire_tpm_attestor.tpm.constants import TPM_ALG, TPM_ST
    from tests.eventlog_builder import sample_logs, uefi_log
    from tests.unit.tpm_builders import marshal_attest, marshal_selection, sha256, tpm_sign

    pending = targets.pending_challenge()
    ak_key = targets.software_key(targets.AK_SEED)
    devid_key = targets.software_key(targets.DEVID_SEED)
    agent_nonce = bytes(range(50, 82))
    logs = sample_logs()
    chosen = {
        "crypto-agile sha1+sha256": logs["crypto-agile sha1+sha256"],
        "h-crtm, locality 4": logs["h-crtm, locality 4"],
        "windows trailer": logs["windows trailer"],
        "small": uefi_log(banks=(TPM_ALG.SHA256,), gpt_entries=0).build(),
    }
    for built in chosen.values():
        values = built.quoted()
        values[TPM_ALG.SHA256, 16] = bytes(32)
        order = sorted(index for _, index in values)
        attest = marshal_attest(
            extra_data=NONCE,
            selection=marshal_selection([(TPM_ALG.SHA256, order)]),
            pcr_digest=sha256(b"".join(values[TPM_ALG.SHA256, i] for i in order)),
        )
        certify = marshal_attest(
            extra_data=NONCE,
            attest_type=TPM_ST.ATTEST_CERTIFY,
            certified_name=pending.evidence.devid.public.name(),
        )
        yield wire.encode(
            wire.ChallengeResponse(
                version=1,
                secret=SECRET,
                quote=attest,
                quote_signature=tpm_sign(ak_key, attest, TPM_ALG.ECDSA),
                pcr_values=[
                    wire.PCRValue(hash_alg=bank, index=index, digest=digest)
                    for (bank, index), digest in sorted(values.items())
                ],
                devid_certify=certify,
                devid_certify_signature=tpm_sign(ak_key, certify, TPM_ALG.ECDSA),
                agent_nonce=agent_nonce,
                devid_signature=tpm_sign(
                    devid_key, wire.devid_signed_data(NONCE, agent_nonce), TPM_ALG.ECDSA
                ),
                event_log=built.data,
            )
        )


def challenge_seeds() -> Iterator[bytes]:
    from spire_tpm_attestor import wire
    from spire_tpm_attestor.tpm.constants import TPM_ALG

    yield wire.encode(
        wire.Challenge(
            version=1,
            credential_blob=bytes(68),
            encrypted_secret=bytes(258),
            nonce=NONCE,
            pcr_selection=[
                wire.PCRBankSelection(hash_alg=TPM_ALG.SHA256, indices=[0, 1, 2, 7, 16]),
                wire.PCRBankSelection(hash_alg=TPM_ALG.SHA1, indices=[16]),
            ],
            want_event_log=True,
        )
    )


def tpm_seeds() -> Iterator[bytes]:
    ek = vector("swtpm_ek.json")
    for kind in ("rsa2048", "ecc256", "ecc384"):
        yield b"\x00" + _hex(ek[kind]["ek_public"])
    for name in ("swtpm_ak_rsa.json", "swtpm_ak_ecc.json", "swtpm_ak_rsapss.json"):
        ak = vector(name)
        yield b"\x00" + _hex(ak["ak_public"])
        yield b"\x01" + _hex(ak["quote"]["attest"])
        yield b"\x02" + _hex(ak["quote"]["signature"])
        if "certify" in ak:
            yield b"\x00" + _hex(ak["certify"]["certified_public"])
            yield b"\x01" + _hex(ak["certify"]["attest"])
            yield b"\x02" + _hex(ak["devid_signature"]["signature"])


def x509_seeds() -> Iterator[bytes]:
    from cryptography import x509

    from tests.unit.x509_builders import DEVIATIONS, der, make_ca, make_ek_cert

    ek = vector("swtpm_ek.json")
    root_pem = (VECTORS / "swtpm_localca_root.pem").read_bytes()
    intermediate_pem = (VECTORS / "swtpm_localca_intermediate.pem").read_bytes()
    root, intermediate = (x509.load_pem_x509_certificate(p) for p in (root_pem, intermediate_pem))
    rsa_ek = _hex(ek["rsa2048"]["ek_certificate"])
    yield b"\x00" + rsa_ek
    yield b"\x00" + _hex(ek["ecc384"]["ek_certificate"])
    yield b"\x00" + b"\x10\x01\x00" + struct.pack(">H", len(rsa_ek)) + rsa_ek + b"\xff" * 16
    yield b"\x00" + intermediate_pem
    # The tolerant path: one certificate per deviation the tests know.
    ca = make_ca("fuzz EK CA", key=targets.software_key(0xCA))
    clean = der(make_ek_cert(targets.software_key(0xEC).public_key(), ca))
    for deviation in DEVIATIONS:
        if deviation.for_ek and not deviation.rsa_key:
            yield b"\x00" + deviation.make(clean, ca)[0]
    yield b"\x01" + root_pem + intermediate_pem
    yield b"\x02" + der(intermediate)
    yield b"\x02" + pkcs7.serialize_certificates([intermediate, root], serialization.Encoding.DER)
    yield b"\x02" + pkcs7.serialize_certificates([intermediate], serialization.Encoding.PEM)
    yield b"\x03" + der(intermediate) + der(root) + b"\xff" * 32


def allowlist_seeds() -> Iterator[bytes]:
    from server_plugin.allowlist import AllowlistEntry
    from server_plugin.allowlist.document import render_document

    entries = [
        AllowlistEntry("a" * 64, name="node-1", labels={"rack": "r1"}),
        AllowlistEntry("0" * 64),
        AllowlistEntry("1" * 63 + "2", name="node-2"),
    ]
    yield b"\x00" + render_document(entries).encode()
    yield b"\x00" + (Path("examples/allowlist/allowlist.json")).read_bytes()
    yield b"\x01" + b'{"name": "node-1", "labels": {"rack": "r1", "zone": "z"}}'
    yield b"\x01" + b"{}"


def config_seeds() -> Iterator[bytes]:
    yield b"\x00" + b"\n".join(
        (
            b'ek_policy = "cert_or_allowlist"',
            b'ek_ca_path = ["ca.pem"]',
            b'ek_cert_expiry = "ignore"',
            b'hash_path = "entries"',
            b'agent_path_template = "{{ .PluginName }}/{{ .Name }}"',
            b'pcr_selection = { sha256 = ["7", "16"] }',
            b'pcr_policy_path = "pcr_policy.hcl"',
            b'event_log_policy_path = "event_log_policy.hcl"',
            b'devid_ca_path = "ca.pem"',
            b"allowlist {",
            b'  file { path = "allowlist.json" }',
            b'  http { url = "https://allowlist.example/list.json" refresh_interval = "5m" }',
            b"}",
            b'log_level = "DEBUG"',
            b'telemetry { Prometheus { host = "127.0.0.1" port = 9989 } }',
        )
    )
    for name in ("server-plugin-data.hcl", "server-plugin-data-fetch.hcl"):
        yield b"\x00" + (Path("examples") / name).read_bytes()
    yield b"\x00" + (Path("examples/allowlist/server-plugin-data.hcl")).read_bytes()
    yield b"\x01" + (Path("examples/agent-plugin-data.hcl")).read_bytes()
    yield b"\x02" + targets.SANDBOX_FILES["pcr_policy.hcl"]
    yield b"\x02" + Path("examples/pcr-policy.json").read_bytes()
    yield b"\x03" + Path("examples/event-log-policy.hcl").read_bytes()


def event_log_seeds() -> Iterator[bytes]:
    from tests.eventlog_builder import sample_logs

    for built in sample_logs().values():
        yield built.data


SEEDS = {
    "server_payload": payload_seeds,
    "server_response": response_seeds,
    "agent_challenge": challenge_seeds,
    "tpm_structures": tpm_seeds,
    "x509": x509_seeds,
    "allowlist": allowlist_seeds,
    "config": config_seeds,
    "event_log": event_log_seeds,
}


def write_seeds(corpus: Path = CORPUS) -> dict[str, int]:
    """Write every target's seeds as seed-<SHA-1> (in place of the last ones: the
    builders sign afresh); the inputs that were findings (finding-<SHA-1>) stay."""
    counts = {}
    for name, seeds in SEEDS.items():
        directory = corpus / name
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("seed-*"):
            old.unlink()
        count = 0
        for data in seeds():
            (directory / f"seed-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
            count += 1
        counts[name] = count
    return counts
