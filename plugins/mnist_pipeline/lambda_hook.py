"""The hook for the pipeline's Lambda calls, as the provider's hooks hold theirs.

The operators in :mod:`mnist_pipeline.deploy` and :mod:`mnist_pipeline.rollback` store their arguments, call one of these methods, log and return
JSON; the state machines (publish once per code, move the alias only from where the run last saw
it, restore it only if it is still where the run left it) live here, like the provider's
``LambdaHook.invoke_lambda`` and ``create_lambda``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook
from airflow.providers.common.compat.sdk import AirflowException

from mnist_pipeline.endpoint import DeploymentCheckFailed, parse_handler_response
from mnist_pipeline.live_alias import (
    AliasChangedElsewhere,
    alias_state,
    describe_state,
    get_alias,
    revision_condition,
    same_state,
)

DESCRIPTION_MAX = 256  # Lambda's limit on a version description


class MnistLambdaHook(LambdaHook):
    """
    ``LambdaHook`` with the calls the deployment makes: alias lookup, the version that has this
    code, update-if-changed and publish-once, invoke-and-parse, and the two alias moves.

    :param kwargs: as for ``LambdaHook`` (``aws_conn_id``, ``region_name``, ``verify``, ``config``).
    """

    def get_alias_state(self, function_name: str, alias: str) -> dict:
        """The alias's :func:`~mnist_pipeline.live_alias.alias_state` (``exists`` False if absent)."""
        return alias_state(get_alias(self.conn, function_name, alias))

    def version_with_code(self, function_name: str, code_sha256: str) -> dict | None:
        """The newest published version whose CodeSha256 is ``code_sha256``, or None."""
        matches = [
            version
            for page in self.conn.get_paginator("list_versions_by_function").paginate(
                FunctionName=function_name
            )
            for version in page["Versions"]
            if version["Version"] != "$LATEST" and version["CodeSha256"] == code_sha256
        ]
        return max(matches, key=lambda version: int(version["Version"]), default=None)

    def update_code_if_changed(
        self, function_name: str, s3_bucket: str, s3_key: str, code_sha256: str, waiter_config: Mapping
    ) -> tuple[dict, bool]:
        """Point ``$LATEST`` at the zip unless it already has its CodeSha256; wait for the update.

        :return: ``($LATEST's configuration after it, whether the code was updated)``.
        """
        conn = self.conn
        latest = conn.get_function_configuration(FunctionName=function_name)
        code_updated = latest["CodeSha256"] != code_sha256
        if code_updated:
            self.log.info(
                "Updating %s $LATEST from s3://%s/%s (CodeSha256 %s → %s).",
                function_name,
                s3_bucket,
                s3_key,
                latest["CodeSha256"],
                code_sha256,
            )
            conn.update_function_code(
                FunctionName=function_name, S3Bucket=s3_bucket, S3Key=s3_key, **revision_condition(latest)
            )
        else:
            self.log.info("%s $LATEST already has CodeSha256 %s.", function_name, code_sha256)
        conn.get_waiter("function_updated_v2").wait(
            FunctionName=function_name, WaiterConfig=dict(waiter_config)
        )
        latest = conn.get_function_configuration(FunctionName=function_name)
        if latest["CodeSha256"] != code_sha256:
            raise AirflowException(
                f"{function_name} $LATEST has CodeSha256 {latest['CodeSha256']} after the update, not "
                f"{code_sha256}: s3://{s3_bucket}/{s3_key} is not the zip that sha was computed from"
            )
        return latest, code_updated

    def publish_code(
        self,
        function_name: str,
        s3_bucket: str,
        s3_key: str,
        code_sha256: str,
        description: str,
        waiter_config: Mapping,
    ) -> tuple[dict, bool, bool]:
        """Deploy the zip to ``$LATEST`` (if changed) and publish it, once per code; wait until the
        version is Active.

        :return: ``(the version, whether it was published now, whether $LATEST's code changed)``.
        """
        latest, code_updated = self.update_code_if_changed(
            function_name, s3_bucket, s3_key, code_sha256, waiter_config
        )
        version = self.version_with_code(function_name, code_sha256)
        created = version is None
        if not created:
            self.log.info("Version %s already has this code; not publishing another.", version["Version"])
        else:
            version = self.conn.publish_version(
                FunctionName=function_name,
                CodeSha256=code_sha256,
                Description=description[:DESCRIPTION_MAX],
                **revision_condition(latest),
            )
            self.log.info("Published %s version %s: %s", function_name, version["Version"], description)
        self.conn.get_waiter("published_version_active").wait(
            FunctionName=function_name, Qualifier=version["Version"], WaiterConfig=dict(waiter_config)
        )
        return version, created, code_updated

    def invoke_json(self, function_name: str, qualifier: str, request: dict) -> tuple[int, dict, str | None]:
        """Invoke synchronously; return (statusCode, body, executed version). Function errors raise."""
        where = f"{function_name}:{qualifier}"
        response = self.conn.invoke(
            FunctionName=function_name,
            Qualifier=qualifier,
            InvocationType="RequestResponse",
            Payload=json.dumps(request).encode(),
        )
        payload = response["Payload"].read()
        if response.get("FunctionError"):
            raise DeploymentCheckFailed(
                f"{where} raised an error ({response['FunctionError']}): {payload[:1000]!r}"
            )
        status, body = parse_handler_response(payload, where)
        return status, body, response.get("ExecutedVersion")

    def shift_alias(
        self, function_name: str, alias: str, version: str, weight: float, expected: dict | None
    ) -> tuple[dict, dict, bool]:
        """Move ``alias`` to ``version`` (``weight`` < 1: a canary beside its primary), only from the
        state ``expected`` (None: no check); create it when missing; nothing when already there.

        :return: ``(before, after, changed)`` as alias states.
        """
        current = get_alias(self.conn, function_name, alias)
        before = alias_state(current)
        primary = (expected or before)["version"]
        # Already fully on the version (a canary step cleared after the promotion): nothing to undo.
        if weight >= 1 or primary in (None, version) or before["version"] == version:
            target_version, target_weights = version, {}
        else:
            target_version, target_weights = primary, {version: weight}
        if before["exists"] and (before["version"], before["weights"]) == (target_version, target_weights):
            self.log.info(
                "Alias %s is already on %s %s: nothing to do.", alias, target_version, target_weights
            )
            return before, before, False
        if expected is not None and not same_state(before, expected):
            raise AliasChangedElsewhere(
                f"alias {alias} is at {describe_state(before)}, not at {describe_state(expected)} where "
                f"this run last saw it: it was changed elsewhere since; not moving it to version {version}"
            )
        if current is None:
            self.log.info("Alias %s does not exist: creating it on version %s.", alias, version)
            after = self.conn.create_alias(FunctionName=function_name, Name=alias, FunctionVersion=version)
            return before, alias_state(after), True
        after = self.conn.update_alias(
            FunctionName=function_name,
            Name=alias,
            FunctionVersion=target_version,
            RoutingConfig={"AdditionalVersionWeights": target_weights},
            **revision_condition(current),
        )
        self.log.info("Alias %s: %s → %s %s.", alias, describe_state(before), target_version, target_weights)
        return before, alias_state(after), True

    def restore_alias(
        self, function_name: str, alias: str, start: dict, left: dict | None
    ) -> tuple[dict, dict]:
        """Put ``alias`` back to ``start`` (delete it if it did not exist), only if it is still at
        ``left``, where the run left it (None: the run never moved it, nothing to do).

        :return: ``(before, after)`` as alias states; the same object when nothing changed.
        """
        version = start["version"] if start["exists"] else None
        current = get_alias(self.conn, function_name, alias)
        before = after = alias_state(current)
        if (before["exists"], before["version"], before["weights"]) == (start["exists"], version, {}) or (
            not start["exists"] and not before["exists"]
        ):
            self.log.info("Alias %s is already as it was at the start of the run (%s).", alias, version)
            return before, after
        if left is None:
            self.log.info(
                "This run never moved alias %s (%s); nothing to roll back.", alias, describe_state(before)
            )
            return before, after
        if not same_state(before, left):
            raise AliasChangedElsewhere(
                f"alias {alias} is at {describe_state(before)}, not at {describe_state(left)} where this run "
                f"left it: it was changed elsewhere since, so it is not rolled back to "
                f"{describe_state(start) if start['exists'] else 'absent'}; check it by hand"
            )
        if version is None:
            self.log.warning("Alias %s did not exist at the start of the run: deleting it.", alias)
            self.conn.delete_alias(FunctionName=function_name, Name=alias)
            return before, alias_state(None)
        self.log.warning("Rolling alias %s back: %s → %s.", alias, describe_state(before), version)
        updated = self.conn.update_alias(
            FunctionName=function_name,
            Name=alias,
            FunctionVersion=version,
            RoutingConfig={"AdditionalVersionWeights": {}},
            **revision_condition(current),
        )
        return before, alias_state(updated)
