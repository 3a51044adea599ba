"""Lambda deployment operators: publish a version, smoke test it, shift the alias, check, roll back.

Written like the amazon provider's ``operators/lambda_function.py``: thin operators over
``LambdaHook(...).conn`` that store their arguments, log what they did and return JSON for XCom.
Each is idempotent, so a retry or a cleared task never publishes a second version of the same
code or moves the alias twice:

- :func:`upload_lambda_package` builds the deterministic zip (handler + the job's model.onnx and
  model_card.json) and puts it in S3 once per content.
- :class:`LambdaPublishVersionOperator` updates ``$LATEST`` only when the zip's CodeSha256
  differs, and returns the existing version that has that code instead of publishing another.
- :class:`LambdaSmokeTestOperator` invokes a *version* (never the alias) with known holdout digits
  and a malformed request.
- :class:`LambdaAliasShiftOperator` moves the alias (canary weight or fully), with RevisionId so a
  concurrent change is not overwritten, and does nothing when the alias is already there.
- :class:`LambdaCanaryCheckOperator` invokes the alias N times; every call must succeed.
- :class:`LambdaAliasRollbackOperator` puts the alias back on the version it had before.

The function answers as ``lambda_package/handler.py`` does for a direct invoke: an API
Gateway-style ``{"statusCode", "headers", "body": "<json>"}``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.providers.common.compat.sdk import AirflowException
from botocore.exceptions import ClientError

from mnist_pipeline import s3io
from mnist_pipeline.artifacts import download_model, source_package_dir
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lambda_zip import build_lambda_zip, code_sha256
from mnist_pipeline.shards import load_shard_bytes

if TYPE_CHECKING:
    from airflow.sdk import Context

DESCRIPTION_MAX = 256  # Lambda's limit on a version description
# Wrong length: the handler must answer 4xx, never run the model on it or fail with a 5xx.
MALFORMED_REQUEST = {"input": [0] * 10}


class DeploymentCheckFailed(AirflowException):
    """A deployed version or alias did not answer as it must; the message says what it answered."""


# --- the deployment package -------------------------------------------------------------------------


def upload_lambda_package(s3, config: PipelineConfig, model_uri: str) -> dict:
    """Build the Lambda zip for a job's model.tar.gz and upload it as ``lambda/<sha256>.zip``.

    The zip is ``lambda_package/handler.py`` with the job's ``model.onnx`` and
    ``model_card.json``, built reproducibly, so the same model gives the same CodeSha256 and the
    upload happens once.

    :return: ``{"s3_bucket", "s3_key", "code_sha256", "uploaded"}``, the publish operator's inputs.
    """
    handler = source_package_dir("lambda_package") / "handler.py"
    with tempfile.TemporaryDirectory(prefix="mnist-lambda-") as workdir:
        model_dir = download_model(s3, model_uri, Path(workdir))
        data = build_lambda_zip(handler, model_dir / "model.onnx", model_dir / "model_card.json")
    key = config.lambda_zip_key(hashlib.sha256(data).hexdigest())
    uploaded = not s3io.exists(s3, config.bucket, key)
    if uploaded:
        s3io.put_bytes(s3, config.bucket, key, data, "application/zip")
    return {"s3_bucket": config.bucket, "s3_key": key, "code_sha256": code_sha256(data), "uploaded": uploaded}


# --- helpers shared by the operators ----------------------------------------------------------


def version_description(run_id: str, training_job: str, accuracy: float) -> str:
    """The published version's description: which run, job and holdout accuracy it came from."""
    return f"run {run_id}; job {training_job}; accuracy {accuracy:.4f}"[:DESCRIPTION_MAX]


def parse_handler_response(payload: bytes, where: str) -> tuple[int, dict]:
    """(statusCode, parsed body) of the handler's API Gateway-style answer to a direct invoke."""
    try:
        response = json.loads(payload)
        status, body = int(response["statusCode"]), json.loads(response["body"])
    except (ValueError, KeyError, TypeError) as error:
        raise DeploymentCheckFailed(
            f"{where} answered {payload[:300]!r}, not an API Gateway-style response with statusCode and a "
            f"JSON body ({error})"
        ) from error
    return status, body


def invoke_json(conn, function_name: str, qualifier: str, request: dict) -> tuple[int, dict, str | None]:
    """Invoke synchronously; return (statusCode, body, executed version). Function errors raise."""
    where = f"{function_name}:{qualifier}"
    response = conn.invoke(
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


def pick_examples(
    images: np.ndarray, labels: np.ndarray, count: int | None = None
) -> tuple[list[list[int]], list[int]]:
    """Digits of a holdout shard as request pixels and expected labels: all of them, or ``count``
    evenly spaced ones."""
    if count is not None and count < 1:
        raise ValueError(f"need at least one example, got count={count}")
    total = len(labels)
    indices = np.unique(np.linspace(0, total - 1, num=min(count or total, total)).round().astype(int))
    pixels = images[indices].reshape(len(indices), -1).astype(int).tolist()
    return pixels, labels[indices].astype(int).tolist()


def alias_state(alias: dict | None) -> dict:
    """The part of an alias that matters: ``{"exists", "version", "weights", "revision_id"}``."""
    if alias is None:
        return {"exists": False, "version": None, "weights": {}, "revision_id": None}
    weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    return {
        "exists": True,
        "version": alias["FunctionVersion"],
        "weights": dict(weights),
        "revision_id": alias.get("RevisionId"),
    }


def get_alias(conn, function_name: str, alias: str) -> dict | None:
    try:
        return conn.get_alias(FunctionName=function_name, Name=alias)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return None
        raise


def _revision(response: dict) -> dict:
    # Only condition on a revision the service reported (moto's functions have none).
    return {"RevisionId": response["RevisionId"]} if response.get("RevisionId") else {}


class _LambdaExamplesMixin:
    """Reads the known digits a check sends, from a holdout shard in S3."""

    examples_uri: str
    aws_conn_id: str | None
    region_name: str | None
    verify: bool | str | None
    botocore_config: dict | None

    def load_examples(self, count: int | None) -> tuple[list[list[int]], list[int]]:
        bucket, key = s3io.split_s3_uri(self.examples_uri)
        s3 = S3Hook(
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            config=self.botocore_config,
        ).conn
        images, labels = load_shard_bytes(s3io.get_bytes(s3, bucket, key), where=self.examples_uri)
        return pick_examples(images, labels, count)


# --- operators --------------------------------------------------------------------------------


class LambdaPublishVersionOperator(AwsBaseOperator[LambdaHook]):
    """
    Deploy a zip from S3 to the function's ``$LATEST`` and publish it as a version, once per code.

    ``update_function_code`` runs only when the zip's CodeSha256 differs from ``$LATEST``'s; the
    task waits for ``function_updated_v2``; when a version with that CodeSha256 already exists it
    is returned and nothing is published.

    https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/lambda/client/publish_version.html

    :param function_name: The name of the AWS Lambda function.
    :param s3_bucket: The bucket of the deployment zip.
    :param s3_key: The key of the deployment zip.
    :param code_sha256: The zip's CodeSha256 (base64 sha256, see ``lambda_zip.code_sha256``).
    :param description: The version's description, e.g. from :func:`version_description`.
    :param waiter_delay: Seconds between polls of the function's update status.
    :param waiter_max_attempts: Polls before giving up on the update.
    :param aws_conn_id: The AWS connection ID to use
    """

    aws_hook_class = LambdaHook
    template_fields: Sequence[str] = aws_template_fields(
        "function_name", "s3_bucket", "s3_key", "code_sha256", "description"
    )
    ui_color = "#ff7300"

    def __init__(
        self,
        *,
        function_name: str,
        s3_bucket: str,
        s3_key: str,
        code_sha256: str,
        description: str = "",
        waiter_delay: int = 2,
        waiter_max_attempts: int = 150,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.function_name = function_name
        self.s3_bucket = s3_bucket
        self.s3_key = s3_key
        self.code_sha256 = code_sha256
        self.description = description
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts

    def execute(self, context: Context) -> dict:
        conn = self.hook.conn
        latest = conn.get_function_configuration(FunctionName=self.function_name)
        code_updated = latest["CodeSha256"] != self.code_sha256
        if code_updated:
            self.log.info(
                "Updating %s $LATEST from s3://%s/%s (CodeSha256 %s → %s).",
                self.function_name,
                self.s3_bucket,
                self.s3_key,
                latest["CodeSha256"],
                self.code_sha256,
            )
            conn.update_function_code(
                FunctionName=self.function_name,
                S3Bucket=self.s3_bucket,
                S3Key=self.s3_key,
                **_revision(latest),
            )
        else:
            self.log.info("%s $LATEST already has CodeSha256 %s.", self.function_name, self.code_sha256)
        conn.get_waiter("function_updated_v2").wait(
            FunctionName=self.function_name,
            WaiterConfig={"Delay": self.waiter_delay, "MaxAttempts": self.waiter_max_attempts},
        )
        latest = conn.get_function_configuration(FunctionName=self.function_name)
        if latest["CodeSha256"] != self.code_sha256:
            raise AirflowException(
                f"{self.function_name} $LATEST has CodeSha256 {latest['CodeSha256']} after the update, not "
                f"{self.code_sha256}: s3://{self.s3_bucket}/{self.s3_key} is not the zip that sha was computed from"
            )

        existing = self._version_with_code(conn)
        if existing is not None:
            self.log.info("Version %s already has this code; not publishing another.", existing["Version"])
            return self._result(existing, created=False, code_updated=code_updated)
        published = conn.publish_version(
            FunctionName=self.function_name,
            CodeSha256=self.code_sha256,
            Description=self.description[:DESCRIPTION_MAX],
            **_revision(latest),
        )
        self.log.info(
            "Published %s version %s: %s", self.function_name, published["Version"], self.description
        )
        return self._result(published, created=True, code_updated=code_updated)

    def _version_with_code(self, conn) -> dict | None:
        matches = [
            version
            for page in conn.get_paginator("list_versions_by_function").paginate(
                FunctionName=self.function_name
            )
            for version in page["Versions"]
            if version["Version"] != "$LATEST" and version["CodeSha256"] == self.code_sha256
        ]
        return max(matches, key=lambda version: int(version["Version"]), default=None)

    def _result(self, version: dict, *, created: bool, code_updated: bool) -> dict:
        return {
            "function_name": self.function_name,
            "version": version["Version"],
            "function_arn": version["FunctionArn"],
            "code_sha256": version["CodeSha256"],
            "description": version.get("Description", ""),
            "created": created,
            "code_updated": code_updated,
        }


class LambdaSmokeTestOperator(_LambdaExamplesMixin, AwsBaseOperator[LambdaHook]):
    """
    Invoke a published version (not an alias) with known holdout digits and with a malformed request.

    Passes when the digits are classified with accuracy >= ``min_accuracy`` and the malformed
    request gets a 4xx; otherwise fails, saying what the version answered.

    By default every digit of the shard is sent: with the evaluated holdout, the version must
    then reproduce the accuracy the gate approved, and a failure means it does not serve the
    evaluated model. (A sample would be a coin toss near the bar: 100 digits fail a 99.3% model
    at ``min_accuracy=0.99`` about one time in six.)

    https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/lambda/client/invoke.html

    :param function_name: The name of the AWS Lambda function.
    :param version: The published version number to test.
    :param examples_uri: An ``.npz`` holdout shard in S3 (``s3://bucket/key``) to take digits from.
    :param num_examples: How many digits to send (evenly spaced over the shard); None: all.
    :param min_accuracy: The fraction of digits the version must classify correctly.
    :param batch_size: Digits per invocation (the handler's batch form, ``{"inputs": [...]}``).
    :param aws_conn_id: The AWS connection ID to use
    """

    aws_hook_class = LambdaHook
    template_fields: Sequence[str] = aws_template_fields(
        "function_name", "version", "examples_uri", "num_examples", "min_accuracy"
    )
    ui_color = "#ff7300"

    def __init__(
        self,
        *,
        function_name: str,
        version: str,
        examples_uri: str,
        num_examples: int | None = None,
        min_accuracy: float = 0.99,
        batch_size: int = 200,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.function_name = function_name
        self.version = version
        self.examples_uri = examples_uri
        self.num_examples = num_examples
        self.min_accuracy = min_accuracy
        self.batch_size = batch_size

    def execute(self, context: Context) -> dict:
        version = str(self.version)
        if not version.isdigit():
            raise ValueError(f"smoke test a published version number, not {version!r} (an alias or $LATEST)")
        pixels, labels = self.load_examples(None if self.num_examples is None else int(self.num_examples))
        predictions = []
        for start in range(0, len(pixels), self.batch_size):
            status, body, _ = invoke_json(
                self.hook.conn,
                self.function_name,
                version,
                {"inputs": pixels[start : start + self.batch_size]},
            )
            if status != 200 or not isinstance(body.get("predictions"), list):
                raise DeploymentCheckFailed(
                    f"{self.function_name}:{version} answered {status} {json.dumps(body)[:500]} to known digits"
                )
            predictions += body["predictions"]
        accuracy = check_accuracy(
            predictions, labels, float(self.min_accuracy), f"{self.function_name}:{version}"
        )

        status, body, _ = invoke_json(self.hook.conn, self.function_name, version, MALFORMED_REQUEST)
        if not 400 <= status < 500:
            raise DeploymentCheckFailed(
                f"{self.function_name}:{version} answered {status} {json.dumps(body)[:500]} to a malformed request "
                "(10 pixels instead of 784); it must answer 4xx"
            )
        self.log.info(
            "Version %s: %d/%d known digits correct (%.4f); malformed request → %d.",
            version,
            round(accuracy * len(labels)),
            len(labels),
            accuracy,
            status,
        )
        return {"version": version, "examples": len(labels), "accuracy": accuracy, "malformed_status": status}


def check_accuracy(predictions: list, labels: list[int], min_accuracy: float, where: str) -> float:
    """The fraction of ``predictions`` equal to ``labels``; raise if below ``min_accuracy``."""
    if len(predictions) != len(labels):
        raise DeploymentCheckFailed(
            f"{where} returned {len(predictions)} predictions for {len(labels)} digits"
        )
    wrong = [
        (index, label, got)
        for index, (label, got) in enumerate(zip(labels, predictions, strict=True))
        if got != label
    ]
    accuracy = 1 - len(wrong) / len(labels)
    if accuracy < min_accuracy:
        examples = ", ".join(f"#{index}: {label} read as {got}" for index, label, got in wrong[:5])
        raise DeploymentCheckFailed(
            f"{where} classified {len(labels) - len(wrong)}/{len(labels)} known digits correctly "
            f"({accuracy:.4f}), below min_accuracy {min_accuracy}; e.g. {examples}"
        )
    return accuracy


class LambdaAliasShiftOperator(AwsBaseOperator[LambdaHook]):
    """
    Point an alias at a version: fully, or as a canary that gets ``weight`` of the traffic.

    A canary keeps the alias's current version as primary and routes ``weight`` to ``version``;
    ``weight=1`` makes ``version`` the primary and clears routing. Updates carry the alias's
    RevisionId, so a concurrent change fails the task instead of being overwritten. An alias that
    is already in the target state (or already fully on ``version``) is left alone. A missing
    alias is created on ``version`` (a first deployment has nothing to canary against).

    https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/lambda/client/update_alias.html

    :param function_name: The name of the AWS Lambda function.
    :param alias: The alias to move, e.g. ``live``.
    :param version: The published version to send traffic to.
    :param weight: The share of traffic for ``version``: 0 < weight < 1 for a canary, 1 for all.
    :param aws_conn_id: The AWS connection ID to use
    :return: ``{"function_name", "alias", "version", "weight", "before", "after", "changed"}``,
        where before and after are :func:`alias_state` dicts.
    """

    aws_hook_class = LambdaHook
    template_fields: Sequence[str] = aws_template_fields("function_name", "alias", "version", "weight")
    ui_color = "#ff7300"

    def __init__(self, *, function_name: str, alias: str, version: str, weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.function_name = function_name
        self.alias = alias
        self.version = version
        self.weight = weight

    def execute(self, context: Context) -> dict:
        conn, version, weight = self.hook.conn, str(self.version), float(self.weight)
        if not version.isdigit():
            raise ValueError(f"the alias must point at a published version number, not {version!r}")
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        current = get_alias(conn, self.function_name, self.alias)
        before = alias_state(current)
        if current is None:
            self.log.info(
                "Alias %s does not exist: creating it on version %s (no canary possible).",
                self.alias,
                version,
            )
            after = conn.create_alias(
                FunctionName=self.function_name, Name=self.alias, FunctionVersion=version
            )
            return self._result(before, alias_state(after), changed=True)

        if weight >= 1 or before["version"] == version:
            target_version, target_weights = version, {}
        else:
            target_version, target_weights = before["version"], {version: weight}
        if (before["version"], before["weights"]) == (target_version, target_weights):
            self.log.info(
                "Alias %s is already on %s %s: nothing to do.", self.alias, target_version, target_weights
            )
            return self._result(before, before, changed=False)
        after = conn.update_alias(
            FunctionName=self.function_name,
            Name=self.alias,
            FunctionVersion=target_version,
            RoutingConfig={"AdditionalVersionWeights": target_weights},
            **_revision(current),
        )
        self.log.info(
            "Alias %s: %s %s → %s %s.",
            self.alias,
            before["version"],
            before["weights"],
            target_version,
            target_weights,
        )
        return self._result(before, alias_state(after), changed=True)

    def _result(self, before: dict, after: dict, *, changed: bool) -> dict:
        return {
            "function_name": self.function_name,
            "alias": self.alias,
            "version": str(self.version),
            "weight": float(self.weight),
            "before": before,
            "after": after,
            "changed": changed,
        }


class LambdaCanaryCheckOperator(_LambdaExamplesMixin, AwsBaseOperator[LambdaHook]):
    """
    Invoke an alias ``invocations`` times with one known digit each; every call must answer 200.

    The result counts calls and correct answers per executed version, so the canary's share of
    the traffic and its answers are on record.

    https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/lambda/client/invoke.html

    :param function_name: The name of the AWS Lambda function.
    :param alias: The alias to invoke, e.g. ``live``.
    :param examples_uri: An ``.npz`` holdout shard in S3 (``s3://bucket/key``) to take digits from.
    :param invocations: How many calls to make.
    :param aws_conn_id: The AWS connection ID to use
    """

    aws_hook_class = LambdaHook
    template_fields: Sequence[str] = aws_template_fields(
        "function_name", "alias", "examples_uri", "invocations"
    )
    ui_color = "#ff7300"

    def __init__(self, *, function_name: str, alias: str, examples_uri: str, invocations: int = 20, **kwargs):
        super().__init__(**kwargs)
        self.function_name = function_name
        self.alias = alias
        self.examples_uri = examples_uri
        self.invocations = invocations

    def execute(self, context: Context) -> dict:
        # A template field: rendered from "{{ params.canary_invocations }}" it arrives as a string.
        invocations = int(self.invocations)
        pixels, labels = self.load_examples(invocations)
        by_version: dict[str, dict[str, int]] = {}
        failures = []
        for index in range(invocations):
            image, label = pixels[index % len(pixels)], labels[index % len(labels)]
            status, body, executed = invoke_json(
                self.hook.conn, self.function_name, self.alias, {"input": image}
            )
            counts = by_version.setdefault(str(executed), {"invocations": 0, "correct": 0})
            counts["invocations"] += 1
            if status != 200 or body.get("prediction") not in range(10):
                failures.append(f"call {index} (version {executed}): {status} {json.dumps(body)[:200]}")
            elif body["prediction"] == label:
                counts["correct"] += 1
        if failures:
            raise DeploymentCheckFailed(
                f"{len(failures)} of {invocations} calls to {self.function_name}:{self.alias} failed: "
                + "; ".join(failures[:5])
            )
        self.log.info("All %d calls through %s succeeded: %s", invocations, self.alias, by_version)
        return {"alias": self.alias, "invocations": invocations, "by_version": by_version}


class LambdaAliasRollbackOperator(AwsBaseOperator[LambdaHook]):
    """
    Put an alias back on the version it had before the deployment, with no routing.

    ``version=None`` means the alias did not exist before the deployment: it is deleted. An alias
    already in that state is left alone, so the rollback can be retried.

    https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/lambda/client/update_alias.html

    :param function_name: The name of the AWS Lambda function.
    :param alias: The alias to restore, e.g. ``live``.
    :param version: The version the alias had before (``before["version"]`` of the first
        :class:`LambdaAliasShiftOperator`), or None if it had none.
    :param aws_conn_id: The AWS connection ID to use
    :return: ``{"function_name", "alias", "version", "before", "after", "changed"}``.
    """

    aws_hook_class = LambdaHook
    template_fields: Sequence[str] = aws_template_fields("function_name", "alias", "version")
    ui_color = "#ff7300"

    def __init__(self, *, function_name: str, alias: str, version: str | None, **kwargs):
        super().__init__(**kwargs)
        self.function_name = function_name
        self.alias = alias
        self.version = version

    def execute(self, context: Context) -> dict:
        conn = self.hook.conn
        version = None if self.version is None else str(self.version)
        if version is not None and not version.isdigit():
            raise ValueError(
                f"roll back to a published version number or None (no alias before), not {version!r}"
            )
        current = get_alias(conn, self.function_name, self.alias)
        before = after = alias_state(current)
        if version is None and current is not None:
            self.log.warning("Alias %s did not exist before the deployment: deleting it.", self.alias)
            conn.delete_alias(FunctionName=self.function_name, Name=self.alias)
            after = alias_state(None)
        elif version is not None and current is None:
            self.log.warning("Alias %s is missing: recreating it on version %s.", self.alias, version)
            created = conn.create_alias(
                FunctionName=self.function_name, Name=self.alias, FunctionVersion=version
            )
            after = alias_state(created)
        elif version is not None and (before["version"], before["weights"]) != (version, {}):
            self.log.warning(
                "Rolling alias %s back: %s %s → %s.",
                self.alias,
                before["version"],
                before["weights"],
                version,
            )
            updated = conn.update_alias(
                FunctionName=self.function_name,
                Name=self.alias,
                FunctionVersion=version,
                RoutingConfig={"AdditionalVersionWeights": {}},
                **_revision(current),
            )
            after = alias_state(updated)
        else:
            self.log.info("Alias %s is already as it was before the deployment (%s).", self.alias, version)
        return {
            "function_name": self.function_name,
            "alias": self.alias,
            "version": version,
            "before": before,
            "after": after,
            "changed": after is not before,
        }
