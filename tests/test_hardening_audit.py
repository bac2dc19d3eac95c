"""`make audit`'s pip-audit verdict: "not checked" when its database was unreachable, never
"clean"; a finding fails; a real check says how many dependencies it covered."""

from __future__ import annotations

import json

from lm_billing_plugin.testing.audit import NOT_CHECKED, pip_audit_verdict


def report(*deps: dict[str, object]) -> str:
    return json.dumps({"dependencies": list(deps), "fixes": []})


def test_no_answer_at_all_is_not_checked() -> None:
    assert pip_audit_verdict(1, "") == (0, NOT_CHECKED)


def test_every_dependency_skipped_is_not_checked_rather_than_clean() -> None:
    skipped = {"name": "flask", "skip_reason": "Dependency not found on PyPI"}
    code, sentence = pip_audit_verdict(0, report(skipped, skipped))
    assert code == 0 and sentence.startswith(NOT_CHECKED) and "no known" not in sentence


def test_a_known_vulnerability_fails() -> None:
    code, sentence = pip_audit_verdict(1, report(
        {"name": "flask", "version": "0.1", "vulns": [{"id": "PYSEC-1"}]}))
    assert code == 1 and "flask 0.1: PYSEC-1" in sentence


def test_a_real_check_says_what_it_covered() -> None:
    code, sentence = pip_audit_verdict(0, report(
        {"name": "flask", "version": "3.1", "vulns": []},
        {"name": "local", "skip_reason": "not on PyPI"}))
    assert code == 0
    assert sentence == ("pip-audit: 1 dependencies checked, no known vulnerabilities; "
                        "1 could not be checked")
