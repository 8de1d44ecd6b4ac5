"""PCR selection and policy parsing, and the server options that carry them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import hcl as pyhcl
import pytest

from server_plugin.config import ServerConfig, build_server_config
from server_plugin.pcr_policy import (
    PCRPolicyError,
    bank_selections,
    load_pcr_policy_file,
    parse_pcr_policy,
    parse_pcr_selection,
)
from spire_tpm_attestor.runtime.config import ConfigProblems, CoreConfig
from spire_tpm_attestor.testing.ca import TestCA
from spire_tpm_attestor.tpm.constants import TPM_ALG

SHA1, SHA256 = TPM_ALG.SHA1, TPM_ALG.SHA256
A, B = "aa" * 32, "bb" * 32


def test_selection_from_hcl_block() -> None:
    data = pyhcl.loads("pcr_selection { sha256 = [0, 1, 7]\n sha1 = [16] }")
    selection = parse_pcr_selection(data["pcr_selection"])
    assert selection == {(SHA256, 0), (SHA256, 1), (SHA256, 7), (SHA1, 16)}
    banks = bank_selections(selection)
    assert [(b.hash_alg, list(b.indices)) for b in banks] == [(SHA1, [16]), (SHA256, [0, 1, 7])]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"md5": [0]}, "unknown PCR bank"),
        ({"sha256": [24]}, "not an integer 0-23"),
        ({"sha256": ["x"]}, "not an integer 0-23"),
        ({"sha256": [True]}, "not an integer 0-23"),
        ([0, 1], "expected a block"),
    ],
)
def test_bad_selection(value: object, words: str) -> None:
    with pytest.raises(PCRPolicyError, match=words):
        parse_pcr_selection(value)


def test_policy_from_hcl_with_several_values_per_pcr() -> None:
    text = f'pcr_policy {{ sha256 {{ "0" = ["{A}", "{B}"]\n "7" = "{A}" }} }}'
    policy = parse_pcr_policy(pyhcl.loads(text)["pcr_policy"])
    assert policy.allowed == {
        (SHA256, 0): {bytes.fromhex(A), bytes.fromhex(B)},
        (SHA256, 7): {bytes.fromhex(A)},
    }
    assert policy.violation({(SHA256, 0): bytes.fromhex(B), (SHA256, 7): bytes.fromhex(A)}) is None


def test_repeated_bank_blocks_merge_but_not_twice_the_same_pcr() -> None:
    text = f'pcr_policy {{\n sha256 {{ "0" = "{A}" }}\n sha256 {{ "1" = "{B}" }}\n}}'
    assert len(parse_pcr_policy(pyhcl.loads(text)["pcr_policy"]).allowed) == 2
    text = f'pcr_policy {{\n sha256 {{ "0" = "{A}" }}\n sha256 {{ "0" = "{B}" }}\n}}'
    with pytest.raises(PCRPolicyError, match="0 is given twice"):
        parse_pcr_policy(pyhcl.loads(text)["pcr_policy"])


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"sha256": {"7": "abcd"}}, "is not 32 bytes of hex"),
        ({"sha1": {"7": A}}, "is not 20 bytes of hex"),
        ({"sha256": {"7": "zz" * 32}}, "is not 32 bytes of hex"),
        ({"sha256": {"7": []}}, "allows no value at all"),
        ({"sha256": {"99": A}}, "not an integer 0-23"),
        ({"sha256": [A]}, "expected a block"),
    ],
)
def test_bad_policy(value: object, words: str) -> None:
    with pytest.raises(PCRPolicyError, match=words):
        parse_pcr_policy(value)


def test_policy_file_in_json_or_hcl(tmp_path: Path) -> None:
    path = tmp_path / "policy"
    path.write_text(json.dumps({"sha256": {"7": [A]}}))
    assert load_pcr_policy_file(str(path)).pcrs() == {(SHA256, 7)}
    path.write_text(f'sha256 {{ "7" = ["{B}"] }}')
    assert load_pcr_policy_file(str(path)).allowed[(SHA256, 7)] == {bytes.fromhex(B)}
    path.write_text("{ broken")
    with pytest.raises(PCRPolicyError, match="policy: configuration is not valid HCL"):
        load_pcr_policy_file(str(path))


# -- server options ----------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "ca")


@pytest.fixture
def configs() -> Iterator[list[ServerConfig]]:
    built: list[ServerConfig] = []
    yield built
    for config in built:
        config.close()


def build(configs: list[ServerConfig], ca: TestCA, **options: object) -> ServerConfig:
    text = "\n".join(
        f"{key} = {json.dumps(value)}"
        for key, value in {"ek_ca_path": str(ca.bundle_path), **options}.items()
    )
    config = build_server_config(text, CoreConfig("example.org"))
    configs.append(config)
    return config


def problems(ca: TestCA, **options: object) -> list[str]:
    with pytest.raises(ConfigProblems) as raised:
        build([], ca, **options)
    return raised.value.problems


def test_evidence_options(configs: list[ServerConfig], ca: TestCA, tmp_path: Path) -> None:
    config = build(configs, ca)
    assert config.pcr.selection == frozenset() and config.pcr.policy() is None
    assert config.devid.bundle is None and not config.devid.required
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"sha256": {"0": A}}))
    config = build(
        configs,
        ca,
        pcr_selection={"sha256": [0, 7]},
        pcr_policy_path=str(policy),
        devid_ca_path=str(ca.root_path),
        require_devid=True,
        agent_path_template="{{ .DevIDSubjectCN }}",
    )
    assert config.pcr.selection == {(SHA256, 0), (SHA256, 7)}
    policy_now = config.pcr.policy()
    assert policy_now is not None and policy_now.pcrs() == {(SHA256, 0)}
    assert config.devid.required and config.devid.bundle is not None
    assert len(config.devid.bundle.value) == 1


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"require_devid": True}, "require_devid needs devid_ca_path"),
        ({"agent_path_template": "{{ .DevIDFingerprint }}"}, "needs require_devid = true"),
        ({"pcr_selection": {"sha257": [0]}}, "unknown PCR bank"),
        ({"pcr_policy": {"sha256": {"0": "ab"}}}, "is not 32 bytes of hex"),
        ({"pcr_policy_path": "/nonexistent/policy"}, "pcr_policy_path: "),
        ({"pcr_policy": {}, "pcr_policy_path": "/x"}, "mutually exclusive"),
        ({"devid_ca_path": "/nonexistent/ca"}, "devid_ca_path: "),
    ],
)
def test_evidence_option_problems(ca: TestCA, options: dict[str, object], words: str) -> None:
    found = problems(ca, **options)
    assert any(words in problem for problem in found), found
