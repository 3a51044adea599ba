"""The rollback step: put the alias back where the run found it, when a deployment step failed.

:func:`rollback_reason` decides whether there is anything to roll back (a version was published
and a step after it failed); :class:`LambdaAliasRollbackOperator` restores the alias, but only if
it is still where this run left it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from mnist_pipeline.lambda_hook import MnistLambdaHook
from mnist_pipeline.live_alias import last_recorded_state
from mnist_pipeline.names import DEPLOYMENT_STEPS, FAILED_STATES, TASK_IDS, pull, task_states

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)


def rollback_reason(ti, dag_run) -> str | None:
    """Why to roll back (None: nothing to roll back): a version was published and a step after it
    failed. Failures before publishing leave the alias and the registry as they were."""
    published = pull(ti, "publish")
    states = task_states(ti, dag_run)
    failed = [TASK_IDS[step] for step in DEPLOYMENT_STEPS if states.get(TASK_IDS[step]) in FAILED_STATES]
    if published is None or not failed:
        log.info("Nothing to roll back: published=%s, failed deployment steps=%s", published, failed)
        return None
    return f"version {published['version']} rolled back after {', '.join(failed)} failed"


class LambdaAliasRollbackOperator(AwsBaseOperator[MnistLambdaHook]):
    """
    Put an alias back on the version it had at the start of the run, if this run moved it.

    The alias is restored only when it is still exactly where this run left it (version, weights
    and RevisionId, as the last of ``left_by`` recorded; the update conditioned on that
    RevisionId). If it is somewhere else, someone or something changed it since (a hotfix, a
    newer run, a person) and the task fails, naming both states, instead of reverting that change.
    An alias already back on the starting version, with no routing, is left alone, so the rollback
    can be retried or cleared again. When the alias did not exist at the start, it is deleted.

    https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/lambda/client/update_alias.html

    :param function_name: The name of the AWS Lambda function.
    :param alias: The alias to restore, e.g. ``live``.
    :param start_state: The alias's :func:`alias_state` at the start of the run (from
        :func:`inspect_live_alias`).
    :param left_by: Task ids, in run order, of the steps that moved the alias; the last one that
        ran recorded the state this run left it in.
    :param aws_conn_id: The AWS connection ID to use
    :return: ``{"function_name", "alias", "version", "before", "after", "changed"}``.
    """

    aws_hook_class = MnistLambdaHook
    template_fields: Sequence[str] = aws_template_fields("function_name", "alias", "start_state")
    ui_color = "#ff7300"

    def __init__(
        self, *, function_name: str, alias: str, start_state: dict, left_by: Sequence[str] = (), **kwargs
    ):
        super().__init__(**kwargs)
        self.function_name = function_name
        self.alias = alias
        self.start_state = start_state
        self.left_by = tuple(left_by)

    def execute(self, context: Context) -> dict:
        start = self.start_state
        left = last_recorded_state(context["ti"], self.left_by)
        before, after = self.hook.restore_alias(self.function_name, self.alias, start, left)
        return self._result(start["version"] if start["exists"] else None, before, after)

    def _result(self, version: str | None, before: dict, after: dict) -> dict:
        return {
            "function_name": self.function_name,
            "alias": self.alias,
            "version": version,
            "before": before,
            "after": after,
            "changed": after is not before,
        }
