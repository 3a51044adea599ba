"""A person's approval before deployment: Airflow's human-in-the-loop, asked only when it matters.

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

from mnist_pipeline.pipeline import APPROVE, REJECT, approval_wanted

if TYPE_CHECKING:
    from airflow.sdk import Context

DEFAULT_RESPONSE_TIMEOUT = timedelta(hours=24)


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
        not_needed = approval_wanted(context["params"], self.evaluation)
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
