"""The rollback step: put the alias back where the run found it, when a deployment step failed.

:func:`rollback_reason` decides whether there is anything to roll back (a version was published
and a step after it failed); :class:`LambdaAliasRollbackOperator` restores the alias, but only if
it is still where this run left it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from mnist_pipeline.live_alias import (
    AliasChangedElsewhere,
    alias_state,
    describe_state,
    get_alias,
    last_recorded_state,
    revision_condition,
    same_state,
)
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


class LambdaAliasRollbackOperator(AwsBaseOperator[LambdaHook]):
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

    aws_hook_class = LambdaHook
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
        conn, start = self.hook.conn, self.start_state
        version = start["version"] if start["exists"] else None
        current = get_alias(conn, self.function_name, self.alias)
        before = after = alias_state(current)
        left = last_recorded_state(context["ti"], self.left_by)
        if (before["exists"], before["version"], before["weights"]) == (start["exists"], version, {}) or (
            not start["exists"] and not before["exists"]
        ):
            self.log.info("Alias %s is already as it was at the start of the run (%s).", self.alias, version)
            return self._result(version, before, after)
        if left is None:
            self.log.info(
                "This run never moved alias %s (%s); nothing to roll back.",
                self.alias,
                describe_state(before),
            )
            return self._result(version, before, after)
        if not same_state(before, left):
            raise AliasChangedElsewhere(
                f"alias {self.alias} is at {describe_state(before)}, not at {describe_state(left)} where this run "
                f"left it: it was changed elsewhere since, so it is not rolled back to "
                f"{describe_state(start) if start['exists'] else 'absent'}; check it by hand"
            )
        if version is None:
            self.log.warning("Alias %s did not exist at the start of the run: deleting it.", self.alias)
            conn.delete_alias(FunctionName=self.function_name, Name=self.alias)
            after = alias_state(None)
        else:
            self.log.warning("Rolling alias %s back: %s → %s.", self.alias, describe_state(before), version)
            updated = conn.update_alias(
                FunctionName=self.function_name,
                Name=self.alias,
                FunctionVersion=version,
                RoutingConfig={"AdditionalVersionWeights": {}},
                **revision_condition(current),
            )
            after = alias_state(updated)
        return self._result(version, before, after)

    def _result(self, version: str | None, before: dict, after: dict) -> dict:
        return {
            "function_name": self.function_name,
            "alias": self.alias,
            "version": version,
            "before": before,
            "after": after,
            "changed": after is not before,
        }
