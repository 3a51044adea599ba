"""The gate step, in one place: the metric gate, a person's approval, and the verdict between them.

- :func:`gate_decision`: the metric gate, with the numbers in its reasons; a live alias that is
  not safe to move (see :func:`mnist_pipeline.endpoint.inspect_live_alias`) fails it. The
  evaluation records it beside its numbers.
- :class:`DeploymentApprovalOperator`: Airflow's human-in-the-loop, asked only when it matters
  (:func:`approval_not_needed`).
- :func:`gate_verdict`: deploy or not, and why, for the ``quality_gate`` branch.

Why not the standard provider's ``ApprovalOperator``: on "Reject" it only skips the tasks after
it, while a rejected model must still reach the task that marks its package Rejected. This asks
the same two-option question with ``HITLOperator`` and leaves the routing to the gate, which reads
the answer (``chosen_options``) from XCom.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowSkipException
from airflow.providers.standard.operators.hitl import HITLOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

DEFAULT_RESPONSE_TIMEOUT = timedelta(hours=24)
APPROVE, REJECT = "Approve", "Reject"
# Equal accuracies must not fail the gate because 0.993 - 0.002 is 0.9909999999999999.
_TOLERANCE = 1e-9


def gate_decision(
    accuracy: float,
    *,
    min_accuracy: float,
    max_regression: float,
    champion_accuracy: float | None = None,
    champion_note: str | None = None,
    blocked_by: list[str] | tuple[str, ...] = (),
) -> dict:
    """Approve when accuracy >= min_accuracy and, with a champion, >= champion - max_regression,
    and nothing (``blocked_by``: why the live alias must not be moved) blocks a deployment.

    :return: ``{"approved", "reasons", "accuracy", "min_accuracy", "max_regression",
        "champion_accuracy"}``; every reason states the numbers compared.
    """
    reasons = []
    passes_floor = accuracy + _TOLERANCE >= min_accuracy
    reasons.append(f"accuracy {accuracy:.4f} {'>=' if passes_floor else '<'} min_accuracy {min_accuracy:.4f}")
    passes_champion = True
    if champion_accuracy is None:
        reasons.append(champion_note or "no champion to compare with (first deployment)")
    else:
        bar = champion_accuracy - max_regression
        passes_champion = accuracy + _TOLERANCE >= bar
        reasons.append(
            f"accuracy {accuracy:.4f} {'>=' if passes_champion else '<'} champion {champion_accuracy:.4f} "
            f"- max_regression {max_regression:.4f} = {bar:.4f}"
        )
    reasons += [f"deployment blocked: {problem}" for problem in blocked_by]
    return {
        "approved": passes_floor and passes_champion and not blocked_by,
        "reasons": reasons,
        "accuracy": accuracy,
        "min_accuracy": min_accuracy,
        "max_regression": max_regression,
        "champion_accuracy": champion_accuracy,
    }


def approval_not_needed(params: Mapping[str, Any], evaluation: Mapping) -> str | None:
    """Why no person needs to be asked (None: ask). Only a model the metric gate approved, in a run
    that asked for approval and may deploy, is put in front of a person."""
    if not params.get("require_approval"):
        return "require_approval is off"
    if params.get("dry_run"):
        return "dry run: nothing will be deployed"
    if not evaluation["gate"]["approved"]:
        return "the metric gate rejected the model"
    return None


class DeploymentApprovalOperator(HITLOperator):
    """
    Ask a person to approve deploying a model that passed the metric gate; skip when not needed.

    The task is skipped unless the run's ``require_approval`` param is set, it is not a dry run
    and the metric gate approved the model. The question shows the evaluation's numbers and
    report. With no answer within ``response_timeout`` the answer is "Reject": nothing ships
    unseen.

    :param evaluation: The evaluation document from ``evaluate_model`` (templated; an XComArg).
    :param response_timeout: How long to wait for an answer.
    """

    template_fields: Sequence[str] = (*HITLOperator.template_fields, "evaluation")

    def __init__(
        self,
        *,
        evaluation: Mapping[str, Any],
        response_timeout: timedelta = DEFAULT_RESPONSE_TIMEOUT,
        **kwargs,
    ):
        super().__init__(
            subject="Deploy the retrained MNIST model?",
            options=[APPROVE, REJECT],
            defaults=REJECT,
            response_timeout=response_timeout,
            **kwargs,
        )
        self.evaluation = evaluation

    def execute(self, context: Context):
        not_needed = approval_not_needed(context["params"], self.evaluation)
        if not_needed:
            raise AirflowSkipException(f"no approval needed: {not_needed}")
        self.body = approval_body(self.evaluation)
        return super().execute(context)


def approval_body(evaluation: Mapping[str, Any]) -> str:
    """The question's details (Markdown): the gate's reasons and where the full report is."""
    candidate, champion = evaluation["candidate"], evaluation.get("champion") or {}
    champion_accuracy = (champion.get("metrics") or {}).get("accuracy")
    lines = [
        f"Training job `{evaluation['training_job']}` of run `{evaluation['run_id']}`.",
        "",
        f"- candidate accuracy: **{candidate['accuracy']:.4f}** on {evaluation['holdout']['rows']} holdout images",
        f"- live model accuracy: {'-' if champion_accuracy is None else f'{champion_accuracy:.4f}'}",
        *[f"- {reason}" for reason in evaluation["gate"]["reasons"]],
        "",
        f"Full report: {evaluation.get('report_uri', '-')}",
    ]
    return "\n".join(lines)


def gate_verdict(evaluation: Mapping, approval: Mapping | None, require_approval: bool) -> dict:
    """Deploy or not, and why: the metric gate's decision, then the person's, when one was asked.

    :param approval: the approval task's result (``chosen_options``, ``responded_by_user``), or
        None when it did not ask.
    :return: ``{"deploy", "reasons"}``.
    """
    gate = evaluation["gate"]
    reasons = list(gate["reasons"])
    deploy = bool(gate["approved"])
    if deploy and require_approval:
        chosen = (approval or {}).get("chosen_options") or []
        who = _responder(approval)
        if chosen == [APPROVE]:
            reasons.append(f"approved by {who}")
        else:
            deploy = False
            reasons.append(f"rejected by {who}" if chosen else "approval was required but not given")
    return {"deploy": deploy, "reasons": reasons}


def _responder(approval: Mapping | None) -> str:
    user = (approval or {}).get("responded_by_user") or {}
    if isinstance(user, Mapping):
        return user.get("name") or user.get("id") or "a reviewer"
    return str(user)


def approval_summary(approval: Mapping | None, verdict: Mapping | None) -> dict | None:
    """The person's answer for the audit record (None when nobody was asked)."""
    if approval is None:
        return None
    return {
        "chosen_options": approval.get("chosen_options"),
        "responded_by": _responder(approval),
        "deploy": None if verdict is None else verdict["deploy"],
    }
