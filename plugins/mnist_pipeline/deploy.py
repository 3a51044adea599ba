"""The deploy step: build the Lambda package, publish a version, smoke test it, shift the alias.

Written like the amazon provider's ``operators/lambda_function.py``: thin operators over
:class:`mnist_pipeline.lambda_hook.MnistLambdaHook` (which holds the state machines) that store their arguments, log what they did and return JSON for XCom.
Each is idempotent, so a retry or a cleared task never publishes a second version of the same
code or moves the alias twice:

- :func:`upload_lambda_package` builds the deterministic zip (handler + the model.onnx and
  model_card.json the evaluate step kept from the job's model.tar.gz) and puts it in S3 once per
  content, after checking that model.onnx is the very file the evaluation scored (its sha256).
- :class:`LambdaPublishVersionOperator` updates ``$LATEST`` only when the zip's CodeSha256
  differs, returns the existing version that has that code instead of publishing another, and
  waits for the version to be Active.
- :class:`MnistEndpointSmokeTestOperator` invokes a *version* (never the alias) with known holdout
  digits and a malformed request, and checks that the version reports the evaluated model's sha256.
- :class:`LambdaAliasShiftOperator` moves the alias (canary weight or fully), only from the state
  this run last saw it in (version, weights and RevisionId), and does nothing when it is already
  there.
- :class:`MnistCanaryCheckOperator` invokes the alias until the new version itself has answered
  enough calls; every call must succeed.

With :class:`mnist_pipeline.rollback.LambdaAliasRollbackOperator` they keep the invariant: the
alias only ever points at versions that passed the smoke test and the canary, and a rollback never
reverts a change it did not make. The request contract is :mod:`mnist_pipeline.endpoint`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from mnist_pipeline import s3io
from mnist_pipeline.artifacts import SERVED_FILES, source_package_dir
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.endpoint import (
    MALFORMED_REQUEST,
    MAX_CANARY_EXAMPLES,
    DeploymentCheckFailed,
    MnistExamplesMixin,
    check_accuracy,
)
from mnist_pipeline.lambda_hook import DESCRIPTION_MAX, MnistLambdaHook
from mnist_pipeline.lambda_zip import build_lambda_zip, code_sha256
from mnist_pipeline.live_alias import (
    describe_state,
    last_recorded_state,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


def upload_lambda_package(s3, config: PipelineConfig, model_files: dict, expected_model_sha256: str) -> dict:
    """Build the Lambda zip from the files the evaluation kept and upload it as ``lambda/<sha256>.zip``.

    The zip is ``lambda_package/handler.py`` with the evaluated job's ``model.onnx`` and
    ``model_card.json``, as :func:`mnist_pipeline.evaluate.evaluate_run` kept them from the job's
    model.tar.gz (which is not fetched again), built reproducibly, so the same model gives the
    same CodeSha256 and the upload happens once.

    :param model_files: the evaluation's ``model_files``: ``{name: {"key", "sha256"}}``.
    :param expected_model_sha256: the sha256 of the model.onnx the evaluation scored; a different
        file is refused (it changed since it was evaluated), so the deployed model is the
        evaluated one. The other files must still have the sha256 the evaluation recorded.
    :return: ``{"s3_bucket", "s3_key", "code_sha256", "model_sha256", "uploaded"}``.
    """
    contents = {}
    for name in SERVED_FILES:
        if name not in model_files:
            raise FileNotFoundError(
                f"the evaluated model has no {name}, which the Lambda zip needs (it kept {sorted(model_files)})"
            )
        key = model_files[name]["key"]
        contents[name] = s3io.get_bytes(s3, config.bucket, key)
        sha256 = hashlib.sha256(contents[name]).hexdigest()
        scored = name == "model.onnx"
        expected = expected_model_sha256 if scored else model_files[name]["sha256"]
        if sha256 != expected:
            raise DeploymentCheckFailed(
                f"{name} in {config.s3_uri(key)} has sha256 {sha256}, but the evaluation "
                f"{'scored' if scored else 'kept'} {expected}: the file changed after it was evaluated; "
                "not deploying it"
            )
    handler = source_package_dir("lambda_package") / "handler.py"
    data = build_lambda_zip(handler, contents["model.onnx"], contents["model_card.json"])
    key = config.lambda_zip_key(hashlib.sha256(data).hexdigest())
    uploaded = not s3io.exists(s3, config.bucket, key)
    if uploaded:
        s3io.put_bytes(s3, config.bucket, key, data, "application/zip")
    return {
        "s3_bucket": config.bucket,
        "s3_key": key,
        "code_sha256": code_sha256(data),
        "model_sha256": expected_model_sha256,
        "uploaded": uploaded,
    }


def version_description(run_id: str, training_job: str, accuracy: float) -> str:
    """The published version's description: which run, job and holdout accuracy it came from."""
    return f"run {run_id}; job {training_job}; accuracy {accuracy:.4f}"[:DESCRIPTION_MAX]


def rollout_start(canary_weight: float, *, canary_task: str, promote_task: str) -> str:
    """The first alias step: the canary when it gets traffic, else straight to full promotion."""
    return canary_task if float(canary_weight) > 0 else promote_task


class LambdaPublishVersionOperator(AwsBaseOperator[MnistLambdaHook]):
    """
    Deploy a zip from S3 to the function's ``$LATEST`` and publish it as a version, once per code.

    ``update_function_code`` runs only when the zip's CodeSha256 differs from ``$LATEST``'s; the
    task waits for ``function_updated_v2``; when a version with that CodeSha256 already exists it
    is returned and nothing is published. Either way the task ends only once the version is
    Active (``published_version_active``), so the smoke test never meets a Pending version.

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

    aws_hook_class = MnistLambdaHook
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
        version, created, code_updated = self.hook.publish_code(
            self.function_name,
            self.s3_bucket,
            self.s3_key,
            self.code_sha256,
            self.description,
            {"Delay": self.waiter_delay, "MaxAttempts": self.waiter_max_attempts},
        )
        self.log.info(
            "%s version %s has CodeSha256 %s (%s).",
            self.function_name,
            version["Version"],
            self.code_sha256,
            "published now" if created else "published before",
        )
        return self._result(version, created=created, code_updated=code_updated)

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


class MnistEndpointSmokeTestOperator(MnistExamplesMixin, AwsBaseOperator[MnistLambdaHook]):
    """
    Invoke a published version (not an alias) with known holdout digits and with a malformed request.

    Passes when the digits are classified with accuracy >= ``min_accuracy``, every answer names
    ``expected_model_sha256`` as the model it ran (so the version serves the evaluated model, not
    merely a good one), and the malformed request gets a 4xx; otherwise fails, saying what the
    version answered.

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
    :param expected_model_sha256: The sha256 of the evaluated model.onnx, which the handler reports
        in every answer (``model.model_sha256``); None skips that check.
    :param batch_size: Digits per invocation (the handler's batch form, ``{"inputs": [...]}``).
    :param aws_conn_id: The AWS connection ID to use
    """

    aws_hook_class = MnistLambdaHook
    template_fields: Sequence[str] = aws_template_fields(
        "function_name", "version", "examples_uri", "num_examples", "min_accuracy", "expected_model_sha256"
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
        expected_model_sha256: str | None = None,
        batch_size: int = 200,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.function_name = function_name
        self.version = version
        self.examples_uri = examples_uri
        self.num_examples = num_examples
        self.min_accuracy = min_accuracy
        self.expected_model_sha256 = expected_model_sha256
        self.batch_size = batch_size

    def execute(self, context: Context) -> dict:
        version = str(self.version)
        if not version.isdigit():
            raise ValueError(f"smoke test a published version number, not {version!r} (an alias or $LATEST)")
        pixels, labels = self.load_examples(None if self.num_examples is None else int(self.num_examples))
        predictions = []
        for start in range(0, len(pixels), self.batch_size):
            status, body, _ = self.hook.invoke_json(
                self.function_name,
                version,
                {"inputs": pixels[start : start + self.batch_size]},
            )
            if status != 200 or not isinstance(body.get("predictions"), list):
                raise DeploymentCheckFailed(
                    f"{self.function_name}:{version} answered {status} {json.dumps(body)[:500]} to known digits"
                )
            self._check_model(body, version)
            predictions += body["predictions"]
        accuracy = check_accuracy(
            predictions, labels, float(self.min_accuracy), f"{self.function_name}:{version}"
        )

        status, body, _ = self.hook.invoke_json(self.function_name, version, MALFORMED_REQUEST)
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
        return {
            "version": version,
            "examples": len(labels),
            "accuracy": accuracy,
            "malformed_status": status,
            "model_sha256": self.expected_model_sha256,
        }

    def _check_model(self, body: dict, version: str) -> None:
        """The answer must come from the evaluated model, run by this version."""
        model = body.get("model") if isinstance(body.get("model"), dict) else {}
        if self.expected_model_sha256 and model.get("model_sha256") != self.expected_model_sha256:
            raise DeploymentCheckFailed(
                f"{self.function_name}:{version} serves model.onnx sha256 {model.get('model_sha256')}, not the "
                f"evaluated {self.expected_model_sha256}"
            )
        if model.get("version") not in (None, version):
            raise DeploymentCheckFailed(
                f"{self.function_name}:{version} reports that version {model.get('version')} answered"
            )


class LambdaAliasShiftOperator(AwsBaseOperator[MnistLambdaHook]):
    """
    Point an alias at a version: fully, or as a canary that gets ``weight`` of the traffic.

    A canary keeps the alias's version as primary and routes ``weight`` to ``version``;
    ``weight=1`` makes ``version`` the primary and clears routing. The alias is moved only from
    the state this run last recorded for it (``previous_steps``: version, weights and RevisionId,
    the update conditioned on that RevisionId), so a change someone else made meanwhile fails the
    task, naming both states, instead of being built upon. An alias that is already in the target
    state is left alone (a retry). A missing alias is created on ``version`` (a first deployment
    has nothing to canary against).

    https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/lambda/client/update_alias.html

    :param function_name: The name of the AWS Lambda function.
    :param alias: The alias to move, e.g. ``live``.
    :param version: The published version to send traffic to.
    :param weight: The share of traffic for ``version``: 0 < weight < 1 for a canary, 1 for all.
    :param previous_steps: Task ids, in run order, of the steps before this one that recorded the
        alias's state (``inspect_live_alias``'s task, an earlier shift); the last one that ran is
        the state the alias must still be in. Empty: no such check.
    :param aws_conn_id: The AWS connection ID to use
    :return: ``{"function_name", "alias", "version", "weight", "before", "after", "changed"}``,
        where before and after are :func:`alias_state` dicts.
    """

    aws_hook_class = MnistLambdaHook
    template_fields: Sequence[str] = aws_template_fields("function_name", "alias", "version", "weight")
    ui_color = "#ff7300"

    def __init__(
        self,
        *,
        function_name: str,
        alias: str,
        version: str,
        weight: float = 1.0,
        previous_steps: Sequence[str] = (),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.function_name = function_name
        self.alias = alias
        self.version = version
        self.weight = weight
        self.previous_steps = tuple(previous_steps)

    def execute(self, context: Context) -> dict:
        version, weight = str(self.version), float(self.weight)
        if not version.isdigit():
            raise ValueError(f"the alias must point at a published version number, not {version!r}")
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        expected = last_recorded_state(context["ti"], self.previous_steps) if self.previous_steps else None
        before, after, changed = self.hook.shift_alias(
            self.function_name, self.alias, version, weight, expected
        )
        return self._result(before, after, changed=changed)

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


class MnistCanaryCheckOperator(MnistExamplesMixin, AwsBaseOperator[MnistLambdaHook]):
    """
    Invoke an alias with known digits until the new version itself has answered enough of them.

    Every call must answer 200 with a digit. The check passes only when at least
    ``min_version_calls`` calls were executed by ``version`` (Invoke's ``ExecutedVersion``): at a
    10% canary weight, 20 calls miss the new version entirely about one time in eight, and a
    canary that never ran proves nothing. It makes at least ``invocations`` calls and gives up,
    failing, after ``max_invocations`` (default: four times the calls the alias's weight for
    ``version`` should need). The result counts calls and correct answers per executed version.

    https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/lambda/client/invoke.html

    :param function_name: The name of the AWS Lambda function.
    :param alias: The alias to invoke, e.g. ``live``.
    :param version: The new version the canary sends traffic to.
    :param examples_uri: An ``.npz`` holdout shard in S3 (``s3://bucket/key``) to take digits from.
    :param invocations: The fewest calls to make.
    :param min_version_calls: The fewest calls ``version`` must answer.
    :param max_invocations: The most calls to make; None: from the alias's weight.
    :param aws_conn_id: The AWS connection ID to use
    """

    aws_hook_class = MnistLambdaHook
    template_fields: Sequence[str] = aws_template_fields(
        "function_name", "alias", "version", "examples_uri", "invocations", "min_version_calls"
    )
    ui_color = "#ff7300"

    def __init__(
        self,
        *,
        function_name: str,
        alias: str,
        version: str,
        examples_uri: str,
        invocations: int = 20,
        min_version_calls: int = 5,
        max_invocations: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.function_name = function_name
        self.alias = alias
        self.version = version
        self.examples_uri = examples_uri
        self.invocations = invocations
        self.min_version_calls = min_version_calls
        self.max_invocations = max_invocations

    def execute(self, context: Context) -> dict:
        # Template fields: rendered from "{{ params... }}" they arrive as strings.
        version, invocations, needed = str(self.version), int(self.invocations), int(self.min_version_calls)
        limit = self._call_limit(invocations, needed)
        pixels, labels = self.load_examples(min(limit, MAX_CANARY_EXAMPLES))
        by_version: dict[str, dict[str, int]] = {}
        failures = []
        calls = 0
        while calls < limit and (
            calls < invocations or by_version.get(version, {}).get("invocations", 0) < needed
        ):
            image, label = pixels[calls % len(pixels)], labels[calls % len(labels)]
            status, body, executed = self.hook.invoke_json(self.function_name, self.alias, {"input": image})
            counts = by_version.setdefault(str(executed), {"invocations": 0, "correct": 0})
            counts["invocations"] += 1
            if status != 200 or body.get("prediction") not in range(10):
                failures.append(f"call {calls} (version {executed}): {status} {json.dumps(body)[:200]}")
            elif body["prediction"] == label:
                counts["correct"] += 1
            calls += 1
        if failures:
            raise DeploymentCheckFailed(
                f"{len(failures)} of {calls} calls to {self.function_name}:{self.alias} failed: "
                + "; ".join(failures[:5])
            )
        answered = by_version.get(version, {}).get("invocations", 0)
        if answered < needed:
            raise DeploymentCheckFailed(
                f"only {answered} of {calls} calls to {self.function_name}:{self.alias} were executed by "
                f"version {version}, fewer than the {needed} the canary needs: it did not get its traffic "
                f"(calls per version: {by_version})"
            )
        self.log.info(
            "All %d calls through %s succeeded; version %s answered %d: %s",
            calls,
            self.alias,
            version,
            answered,
            by_version,
        )
        return {
            "alias": self.alias,
            "version": version,
            "invocations": calls,
            "version_invocations": answered,
            "by_version": by_version,
        }

    def _call_limit(self, invocations: int, needed: int) -> int:
        if self.max_invocations is not None:
            return max(int(self.max_invocations), invocations)
        current = self.hook.get_alias_state(self.function_name, self.alias)
        share = 1.0 if current["version"] == str(self.version) else current["weights"].get(str(self.version))
        if not share:
            raise DeploymentCheckFailed(
                f"alias {self.alias} sends no traffic to version {self.version} ({describe_state(current)}): "
                "there is no canary to check"
            )
        return max(invocations, math.ceil(4 * needed / share))
