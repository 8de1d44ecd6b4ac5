"""The agent's DevID files: certificate chain and TPM key blobs, read and cross-checked.

The key is either a TSS2 PEM private key ("-----BEGIN TSS2 PRIVATE KEY-----", as
tpm2-tss-engine, tpm2-openssl, `tpm2_encodeobject` and `spire-tpm-attestor devid create`
write it) or a pair of TPM2B_PUBLIC / TPM2B_PRIVATE files (`tpm2_create -u/-r`). Either
way it is a blob the TPM alone can load; the files hold no usable secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tpm2_pytss as tss
from tpm2_pytss.tsskey import TSSPrivKey

from spire_tpm_attestor.errors import AttestorError, MalformedInput
from spire_tpm_attestor.files import FileTooLarge, read_bounded
from spire_tpm_attestor.tpm.constants import PERSISTENT_FIRST, PERSISTENT_LAST
from spire_tpm_attestor.tpm.structures import parse_tpm2b_public, public_key_equals
from spire_tpm_attestor.x509 import load_ca_bundle

MAX_KEY_FILE = 64 * 1024
MAX_CHAIN = 8
_PERSISTENT = range(PERSISTENT_FIRST, PERSISTENT_LAST + 1)


class DevIDFileError(ValueError):
    """A DevID file is missing, unreadable, or does not match the others."""


@dataclass(frozen=True)
class DevIDKey:
    """What the agent needs to prove its DevID: the chain and the key's TPM blobs."""

    certificates: tuple[bytes, ...]  # DER, leaf first
    public: bytes  # marshaled TPM2B_PUBLIC
    private: bytes  # marshaled TPM2B_PRIVATE
    parent_handle: int | None  # persistent parent; None: the standard SRK


def _read(path: str, what: str) -> bytes:
    try:
        return read_bounded(path, MAX_KEY_FILE)
    except OSError as exc:
        raise DevIDFileError(f"cannot read the {what} {path}: {exc.strerror}") from None
    except FileTooLarge as exc:
        raise DevIDFileError(f"the {what} {exc}") from None


def _read_tss2_pem(path: str) -> tuple[bytes, bytes, int | None]:
    try:
        key = TSSPrivKey.from_pem(_read(path, "DevID key"))
    except (ValueError, TypeError, tss.TSS2_Exception) as exc:
        raise DevIDFileError(f"{path} is not a TSS2 PEM private key: {exc}") from None
    if not key.empty_auth:
        raise DevIDFileError(f"{path}: DevID keys with a password are not supported")
    if key.parent == tss.TPM2_RH.OWNER:
        parent = None
    elif key.parent in _PERSISTENT:
        parent = int(key.parent)
    else:
        raise DevIDFileError(f"{path}: unsupported parent handle {key.parent:#010x}")
    return bytes(key.public.marshal()), bytes(key.private.marshal()), parent


def load_devid_key(
    cert_path: str,
    key_path: str | None,
    public_path: str | None,
    private_path: str | None,
    parent_handle: int | None,
) -> DevIDKey:
    """Read the DevID chain and key blobs, and check the certificate is for that key."""
    if key_path is not None:
        public, private, parent_handle = _read_tss2_pem(key_path)
    elif public_path is not None and private_path is not None:
        public = _read(public_path, "DevID public blob")
        private = _read(private_path, "DevID private blob")
    else:
        raise DevIDFileError("the DevID key is missing: give a TSS2 PEM key or both blobs")
    try:
        chain = load_ca_bundle(cert_path)
    except (OSError, ValueError, AttestorError) as exc:
        raise DevIDFileError(f"DevID certificate: {exc}") from None
    if not chain or len(chain) > MAX_CHAIN:
        raise DevIDFileError(f"{cert_path} must hold 1 to {MAX_CHAIN} certificates, leaf first")
    try:
        same = public_key_equals(parse_tpm2b_public(public), chain[0].public_key())
    except MalformedInput as exc:
        raise DevIDFileError(f"the DevID public blob is not a usable key: {exc}") from None
    if not same:
        raise DevIDFileError(
            f"the first certificate in {Path(cert_path).name} is not for the DevID key"
        )
    return DevIDKey(tuple(cert.der for cert in chain), public, private, parent_handle)
