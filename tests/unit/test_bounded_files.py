"""Every file read of operator input goes through read_bounded: one byte over its limit
is a clear error naming the file and the limit, in the error its caller reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_plugin.devid import MAX_KEY_FILE, DevIDFileError, load_devid_key
from agent_plugin.tpm.nv import MAX_CERTIFICATE_FILE, load_certificate_file
from agent_plugin.tpm.session import TPMAccessError
from server_plugin.allowlist import AllowlistError
from server_plugin.allowlist.directory import MAX_ENTRY_BODY, FlatDirectory
from server_plugin.allowlist.http import MAX_TOKEN_BYTES, read_token
from server_plugin.config import build_server_config
from server_plugin.pcr_policy import MAX_POLICY_FILE, PCRPolicyError, load_pcr_policy_file
from spire_tpm_attestor.files import FileTooLarge, read_bounded
from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig
from spire_tpm_attestor.x509 import load_ca_bundle
from spire_tpm_attestor.x509.bundle import MAX_BUNDLE_FILE_SIZE
from tests.unit.x509_builders import make_ca

EK_HASH = "ab" * 32


def sized(path: Path, size: int) -> str:
    path.write_bytes(b"a" * size)
    return str(path)


def over_limit(path: str, limit: int) -> str:
    """The message that names the file and the limit (a regular expression)."""
    return f"{path} is larger than {limit} bytes"


def test_read_bounded_reads_up_to_the_limit_and_refuses_one_byte_more(tmp_path: Path) -> None:
    assert read_bounded(sized(tmp_path / "fits", 10), 10) == b"a" * 10
    path = sized(tmp_path / "over", 11)
    with pytest.raises(FileTooLarge, match=over_limit(path, 10)):
        read_bounded(path, 10)
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "missing", 10)


def test_bearer_token_file(tmp_path: Path) -> None:
    path = sized(tmp_path / "token", MAX_TOKEN_BYTES + 1)
    with pytest.raises(FileTooLarge, match=over_limit(path, MAX_TOKEN_BYTES)):
        read_token(path)
    text = "\n".join(
        [
            'allowlist "web" {',
            'type = "http"',
            'url = "https://127.0.0.1:9/a.json"',
            f'bearer_token_path = "{path}"',
            "}",
        ]
    )
    with pytest.raises(ConfigProblems) as problems:
        build_server_config(text, CoreConfig("example.org"))
    assert (
        f'allowlist "web": TLS material or bearer token unusable: '
        f"{path} is larger than {MAX_TOKEN_BYTES} bytes"
    ) in problems.value.problems


def test_pcr_policy_file(tmp_path: Path) -> None:
    path = sized(tmp_path / "policy.hcl", MAX_POLICY_FILE + 1)
    with pytest.raises(PCRPolicyError, match=over_limit(path, MAX_POLICY_FILE)):
        load_pcr_policy_file(path)
    text = f'hash_path = "{tmp_path}"\npcr_policy_path = "{path}"'
    with pytest.raises(ConfigProblems) as problems:
        build_server_config(text, CoreConfig("example.org"))
    assert problems.value.problems == [
        f"pcr_policy_path: {path} is larger than {MAX_POLICY_FILE} bytes"
    ]


def test_allowlist_entry_file(tmp_path: Path) -> None:
    path = sized(tmp_path / EK_HASH, MAX_ENTRY_BODY + 1)
    with pytest.raises(AllowlistError, match=over_limit(path, MAX_ENTRY_BODY)):
        FlatDirectory(str(tmp_path), "hash_path").lookup(EK_HASH)


def test_ca_bundle_file(tmp_path: Path) -> None:
    path = sized(tmp_path / "ca.pem", MAX_BUNDLE_FILE_SIZE + 1)
    with pytest.raises(FileTooLarge, match=f"CA bundle {over_limit(path, MAX_BUNDLE_FILE_SIZE)}"):
        load_ca_bundle(path)


def test_devid_key_blob(tmp_path: Path) -> None:
    cert = tmp_path / "devid.pem"
    cert.write_bytes(make_ca("DevID").pem)
    public = sized(tmp_path / "devid.pub", MAX_KEY_FILE + 1)
    with pytest.raises(DevIDFileError, match=over_limit(public, MAX_KEY_FILE)):
        load_devid_key(str(cert), None, public, public, None)


def test_ek_certificate_file(tmp_path: Path) -> None:
    path = sized(tmp_path / "ek.pem", MAX_CERTIFICATE_FILE + 1)
    with pytest.raises(TPMAccessError, match=over_limit(path, MAX_CERTIFICATE_FILE)):
        load_certificate_file(path)
