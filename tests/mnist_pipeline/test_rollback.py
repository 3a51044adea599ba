"""The rollback step's decision: is there anything to roll back (the operator: test_deploy.py)."""

from __future__ import annotations

from mnist_pipeline import rollback
from tests.fixtures.run import DAG_RUN, IDS, FakeTaskInstance


def test_nothing_is_rolled_back_when_no_version_was_published():
    ti = FakeTaskInstance(states={IDS["publish"]: "failed", IDS["smoke_test"]: "upstream_failed"})
    assert rollback.rollback_reason(ti, DAG_RUN) is None


def test_a_failure_after_publishing_is_rolled_back_naming_the_step():
    ti = FakeTaskInstance(
        xcoms={(IDS["publish"], "return_value"): {"version": "5"}},
        states={IDS["publish"]: "success", IDS["smoke_test"]: "success", IDS["canary_check"]: "failed"},
    )
    assert rollback.rollback_reason(ti, DAG_RUN) == "version 5 rolled back after deploy.check_canary failed"
