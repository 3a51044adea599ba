"""The MNIST endpoint's contract, as the deployment checks speak it.

The function answers as ``lambda_package/handler.py`` does for a direct invoke: an API
Gateway-style ``{"statusCode", "headers", "body": "<json>"}``, where the body is
``{"prediction", "probabilities", "model"}`` for ``{"input": [784 pixels]}`` and
``{"predictions": [...]}`` for ``{"inputs": [[784], ...]}``. The smoke test and the canary
(:mod:`mnist_pipeline.deploy`) send known holdout digits (:class:`MnistExamplesMixin`) through
:meth:`mnist_pipeline.lambda_hook.MnistLambdaHook.invoke_json` and judge the answers with :func:`check_accuracy`.
"""

from __future__ import annotations

import json

import numpy as np
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import AirflowFailException

from mnist_pipeline import s3io
from model_code.shards import load_shard_bytes

# Wrong length: the handler must answer 4xx, never run the model on it or fail with a 5xx.
MALFORMED_REQUEST = {"input": [0] * 10}
MAX_CANARY_EXAMPLES = 1000  # distinct digits a canary check sends (then it cycles through them)


class DeploymentCheckFailed(AirflowFailException):
    """A deployed version or alias did not answer as it must; the message says what it answered.

    Not retried: asking a broken version again cannot change its answers, and a canary retried
    with backoff keeps serving its share of errors for minutes before the rollback. (Errors
    reaching the function, a throttle or a lost connection, are botocore's and are retried.)
    """


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


class MnistExamplesMixin:
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
