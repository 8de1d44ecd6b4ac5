"""The event log policy: parsing (strict, naming the entry) and each rule's verdict."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from server_plugin.event_log_policy import (
    MAX_POLICY_FILE,
    EventLogPolicy,
    EventLogPolicyError,
    ProvenBoot,
    load_event_log_policy_file,
    parse_event_log_policy,
)
from spire_tpm_attestor.eventlog import BootFacts, SignatureDatabase
from spire_tpm_attestor.runtime.config import parse_hcl
from spire_tpm_attestor.tpm.constants import TPM_ALG

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32
SHA1, SHA256 = int(TPM_ALG.SHA1), int(TPM_ALG.SHA256)


def database(*certificates: str, hashes: tuple[str, ...] = ()) -> SignatureDatabase:
    return SignatureDatabase("00" * 32, certificates, hashes, len(certificates) + len(hashes))


FACTS = BootFacts(
    secure_boot=True,
    pk=database(A),
    kek=database(A, B),
    db=database(B),
    dbx=database(C, hashes=(A, B)),
    boot_applications=(A, B),
)
ALL_PROVEN = {pcr: frozenset({SHA256}) for pcr in range(8)}
BOOT = ProvenBoot(FACTS, ALL_PROVEN)


# -- parsing -----------------------------------------------------------------------------


def test_every_rule_parses_from_hcl() -> None:
    text = f"""
        require_event_log = true
        require_secure_boot = true
        allowed_pk = ["{A.upper()}"]
        allowed_kek = ["{":".join(A[i : i + 2] for i in range(0, 64, 2))}", "{B}"]
        allowed_db = []
        required_dbx = ["{C}", "{A}"]
        allowed_boot_applications = "{A}"
    """
    assert parse_event_log_policy(parse_hcl(text)) == EventLogPolicy(
        require_event_log=True,
        require_secure_boot=True,
        allowed_pk=frozenset({A}),
        allowed_kek=frozenset({A, B}),
        allowed_db=frozenset(),
        required_dbx=(C, A),
        allowed_boot_applications=frozenset({A}),
    )


def test_an_empty_policy_has_no_rule() -> None:
    policy = parse_event_log_policy({})
    assert policy == EventLogPolicy() and policy.pcrs() == frozenset()
    assert policy.refusal(None, "") is None


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"require_secureboot": True}, "policy.json: require_secureboot: unknown option"),
        ({"require_secure_boot": "yes"}, "require_secure_boot: expected a boolean"),
        ({"allowed_pk": [A[:-2]]}, "allowed_pk: '" + A[:-2] + "' is not a SHA-256"),
        ({"required_dbx": ["zz" * 32]}, "required_dbx: 'zzzz"),
        ({"allowed_db": 7}, "allowed_db: expected a list of strings"),
    ],
)
def test_a_bad_policy_names_the_entry(document: object, problem: str) -> None:
    with pytest.raises(EventLogPolicyError) as raised:
        parse_event_log_policy(document, "policy.json")
    assert problem in str(raised.value)


def test_a_policy_that_is_not_a_set_of_rules_is_refused() -> None:
    with pytest.raises(EventLogPolicyError, match="expected a set of rules"):
        parse_event_log_policy([1, 2])


def test_policy_files_in_json_and_hcl(tmp_path: Path) -> None:
    json_file = tmp_path / "policy.json"
    json_file.write_text('{"require_secure_boot": true}')
    hcl_file = tmp_path / "policy.hcl"
    hcl_file.write_text("require_secure_boot = true\n")
    expected = EventLogPolicy(require_secure_boot=True)
    assert load_event_log_policy_file(str(json_file)) == expected
    assert load_event_log_policy_file(str(hcl_file)) == expected
    hcl_file.write_text("require_secure_boot = \n")
    with pytest.raises(EventLogPolicyError, match=r"policy\.hcl"):
        load_event_log_policy_file(str(hcl_file))
    hcl_file.write_bytes(b" " * (MAX_POLICY_FILE + 1))
    with pytest.raises(EventLogPolicyError, match="larger than"):
        load_event_log_policy_file(str(hcl_file))


# -- verdicts ----------------------------------------------------------------------------

STRICT = EventLogPolicy(
    require_event_log=True,
    require_secure_boot=True,
    allowed_pk=frozenset({A}),
    allowed_kek=frozenset({A, B}),
    allowed_db=frozenset({B}),
    required_dbx=(A, C),
    allowed_boot_applications=frozenset({A, B}),
)


def test_a_boot_that_meets_every_rule_passes() -> None:
    assert STRICT.refusal(BOOT, "") is None
    assert STRICT.pcrs() == {(SHA256, 7), (SHA256, 4)}


@pytest.mark.parametrize(
    ("facts", "refusal"),
    [
        (replace(FACTS, secure_boot=False), "require_secure_boot: Secure Boot is disabled"),
        (replace(FACTS, secure_boot=None), "require_secure_boot: Secure Boot is not measured"),
        (replace(FACTS, pk=database(B)), f"allowed_pk: PK certificate {B} is not allowed"),
        (replace(FACTS, pk=None), "allowed_pk: PK is not measured"),
        (replace(FACTS, kek=database(C)), f"allowed_kek: KEK certificate {C} is not allowed"),
        (replace(FACTS, db=database(B, A)), f"allowed_db: db certificate {A} is not allowed"),
        (replace(FACTS, dbx=database(hashes=(A,))), f"required_dbx: dbx lacks the revocation {C}"),
        (replace(FACTS, dbx=None), "required_dbx: dbx is not measured"),
        (
            replace(FACTS, boot_applications=(A, C)),
            f"allowed_boot_applications: boot application {C} is not allowed",
        ),
    ],
)
def test_each_rule_refuses_what_it_does_not_allow(facts: BootFacts, refusal: str) -> None:
    found = STRICT.refusal(ProvenBoot(facts, ALL_PROVEN), "")
    assert found is not None and str(found).startswith(refusal), found


def test_without_a_log_every_rule_refuses_the_first_naming_itself() -> None:
    assert str(STRICT.refusal(None, "too large")) == (
        "require_event_log: the agent sent no event log: too large"
    )
    only_dbx = EventLogPolicy(required_dbx=(A,))
    found = only_dbx.refusal(None, "")
    assert found is not None and found.rule == "required_dbx"
    assert "predates event logs" in found.reason


def test_rules_fail_when_their_pcr_is_not_proven() -> None:
    unproven_7 = ProvenBoot(FACTS, {pcr: frozenset({SHA256}) for pcr in range(7)})
    found = STRICT.refusal(unproven_7, "")
    assert found is not None and found.rule == "require_secure_boot"
    assert "does not prove PCR 7" in found.reason
    sha1_only_4 = ProvenBoot(FACTS, {**ALL_PROVEN, 4: frozenset({SHA1})})
    found = STRICT.refusal(sha1_only_4, "")
    assert found is not None and found.rule == "allowed_boot_applications"
