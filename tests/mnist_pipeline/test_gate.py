"""The gate in one place: the metric gate, the person's approval, the verdict between them."""

from __future__ import annotations

import datetime as dt

import pytest
from airflow.providers.common.compat.sdk import AirflowSkipException

from mnist_pipeline import gate
from mnist_pipeline.gate import DeploymentApprovalOperator, approval_body
from tests.fixtures.run import PARAMS, evaluation

# --- the metric gate -----------------------------------------------------------------------------------------


def test_the_gate_approves_a_first_model_above_the_floor():
    decided = gate.gate_decision(0.9921, min_accuracy=0.99, max_regression=0.002)
    assert decided["approved"] is True
    assert decided["reasons"] == [
        "accuracy 0.9921 >= min_accuracy 0.9900",
        "no champion to compare with (first deployment)",
    ]


def test_the_gate_rejects_below_the_floor_and_says_by_how_much():
    decided = gate.gate_decision(0.9850, min_accuracy=0.99, max_regression=0.002, champion_accuracy=0.9800)
    assert decided["approved"] is False
    assert decided["reasons"][0] == "accuracy 0.9850 < min_accuracy 0.9900"


def test_the_gate_rejects_a_regression_beyond_the_allowance():
    decided = gate.gate_decision(0.9905, min_accuracy=0.99, max_regression=0.002, champion_accuracy=0.9930)
    assert decided["approved"] is False
    assert decided["reasons"][1] == "accuracy 0.9905 < champion 0.9930 - max_regression 0.0020 = 0.9910"


def test_exactly_at_the_allowance_passes_despite_float_rounding():
    assert 0.9804 - 0.0015 > 9789 / 10_000  # 0.9789000000000001: a naive comparison would reject
    decided = gate.gate_decision(
        9789 / 10_000, min_accuracy=0.97, max_regression=0.0015, champion_accuracy=0.9804
    )
    assert decided["approved"] is True


# --- the person and the verdict ----------------------------------------------------------------


def test_approval_is_asked_only_for_an_approved_model_in_a_run_that_wants_it():
    wanted = {**PARAMS, "require_approval": True}
    assert gate.approval_not_needed(wanted, evaluation(approved=True)) is None
    assert "require_approval is off" in gate.approval_not_needed(PARAMS, evaluation(approved=True))
    assert "dry run" in gate.approval_not_needed({**wanted, "dry_run": True}, evaluation(approved=True))
    assert "metric gate rejected" in gate.approval_not_needed(wanted, evaluation(approved=False))


def test_gate_verdict_follows_the_metrics_without_approval():
    assert gate.gate_verdict(evaluation(approved=True), None, require_approval=False)["deploy"] is True
    rejected = gate.gate_verdict(evaluation(approved=False, accuracy=0.95), None, require_approval=False)
    assert rejected["deploy"] is False
    assert rejected["reasons"] == ["accuracy 0.9500 < min_accuracy 0.9900"]


def test_gate_verdict_needs_the_person_to_approve_when_asked():
    approved = {"chosen_options": ["Approve"], "responded_by_user": {"id": "7", "name": "ana"}}
    rejected = {"chosen_options": ["Reject"], "responded_by_user": {"id": "8", "name": "bo"}}
    verdict = gate.gate_verdict(evaluation(approved=True), approved, require_approval=True)
    assert verdict["deploy"] is True and verdict["reasons"][-1] == "approved by ana"
    verdict = gate.gate_verdict(evaluation(approved=True), rejected, require_approval=True)
    assert verdict["deploy"] is False and verdict["reasons"][-1] == "rejected by bo"
    verdict = gate.gate_verdict(evaluation(approved=True), None, require_approval=True)
    assert verdict["deploy"] is False and "not given" in verdict["reasons"][-1]


def test_approval_operator_skips_itself_when_no_approval_is_needed():
    operator = DeploymentApprovalOperator(task_id="approve_deployment", evaluation=evaluation(approved=True))
    assert operator.defaults == ["Reject"]  # no answer in time: nothing ships unseen
    assert operator.response_timeout == dt.timedelta(hours=24)
    with pytest.raises(AirflowSkipException, match="require_approval is off"):
        operator.execute({"params": PARAMS})


def test_approval_question_shows_the_numbers_behind_the_decision():
    body = approval_body(evaluation(approved=True, accuracy=0.9931))
    assert "0.9931" in body and "0.9910" in body
    assert "s3://bucket/evaluations/run/report.md" in body
