"""The SageMaker model registry: one model package per run, linked to its run, job and data.

Each package carries ``CustomerMetadataProperties`` (dag_id, run_id, training_job,
snapshot_sha256, code_sha256, accuracy) and ``ModelMetrics`` pointing at the run's
``evaluation.json``. When a model is deployed its package becomes Approved with the Lambda
function and version added to that metadata, which is how the evaluation finds the champion:
the version behind the alias → the Approved package whose metadata names that version.

Why a subclass of the provider's ``SageMakerRegisterModelVersionOperator``: it creates a new
package on every call, so a retried task would register the run twice. The subclass first
looks for a package in the group whose metadata ``run_id`` is this run and returns its ARN.
(``ClientToken`` is sent too, but AWS honours it only for a limited time and emulators ignore
it; the lookup is what makes the task idempotent.) The lookup describes the group's packages
newest first, one call each: a retry finds its package at once; a new run reads them all, a few
hundred calls after a year of nightly runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.operators.sagemaker import SageMakerRegisterModelVersionOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from mnist_pipeline.sagemaker_hook import MnistSageMakerHook, metadata_value

if TYPE_CHECKING:
    from airflow.sdk import Context

CONTENT_TYPE = "application/json"


def client_token(run_id: str) -> str:
    """CreateModelPackage's idempotency token for a run (at most 36 characters of [a-zA-Z0-9-])."""
    return hashlib.sha256(f"model-package\n{run_id}".encode()).hexdigest()[:36]


class RegisterModelPackageOperator(SageMakerRegisterModelVersionOperator):
    """
    Register the run's model as a package in a model package group, once per run.

    If the group already holds a package whose CustomerMetadataProperties ``run_id`` is
    ``run_id``, its ARN is returned and nothing is created; otherwise the provider's operator
    creates the group (if needed) and the package, with the metrics and metadata below.

    https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/sagemaker/client/create_model_package.html

    :param run_id: The DAG run the model comes from; the key that makes registration idempotent.
    :param image_uri: The container image recorded for inference (e.g. the training image).
    :param model_url: The S3 URI of the model.tar.gz.
    :param package_group_name: The model package group (created if missing).
    :param evaluation_uri: The S3 URI of the run's evaluation.json (ModelMetrics ModelQuality).
    :param customer_metadata: More CustomerMetadataProperties (training_job, snapshot_sha256,
        code_sha256, accuracy...); values are made SageMaker-safe.
    :param package_desc: The package description.
    :param model_approval: The initial approval status (default PendingManualApproval).
    :param aws_conn_id: The AWS connection ID to use
    :return: The model package ARN.
    """

    aws_hook_class = MnistSageMakerHook
    template_fields: Sequence[str] = aws_template_fields(
        *SageMakerRegisterModelVersionOperator.template_fields,
        "run_id",
        "evaluation_uri",
        "customer_metadata",
    )

    def __init__(
        self,
        *,
        run_id: str,
        evaluation_uri: str,
        customer_metadata: Mapping[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.run_id = run_id
        self.evaluation_uri = evaluation_uri
        self.customer_metadata = customer_metadata

    def execute(self, context: Context) -> str:
        existing = self.hook.package_for_run(self.package_group_name, self.run_id)
        if existing is not None:
            self.log.info("Run %s is already registered as %s.", self.run_id, existing["ModelPackageArn"])
            return existing["ModelPackageArn"]
        self.extras = {**self._registration_fields(), **(self.extras or {})}
        arn = super().execute(context)
        self.log.info("Registered run %s as %s.", self.run_id, arn)
        return arn

    def _registration_fields(self) -> dict:
        metadata = {key: metadata_value(value) for key, value in (self.customer_metadata or {}).items()}
        metadata["run_id"] = metadata_value(self.run_id)
        return {
            "InferenceSpecification": {
                "Containers": [{"Image": self.image_uri, "ModelDataUrl": self.model_url}],
                "SupportedContentTypes": [CONTENT_TYPE],
                "SupportedResponseMIMETypes": [CONTENT_TYPE],
            },
            "ModelMetrics": {
                "ModelQuality": {"Statistics": {"ContentType": CONTENT_TYPE, "S3Uri": self.evaluation_uri}}
            },
            "CustomerMetadataProperties": metadata,
            "ClientToken": client_token(self.run_id),
        }


class ModelPackageStatusOperator(AwsBaseOperator[MnistSageMakerHook]):
    """
    Approve or reject a model package, recording why (and, when deployed, the Lambda version).

    Idempotent: a package already in that state with that metadata is not updated again.

    https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/sagemaker/client/update_model_package.html

    :param model_package_arn: The package to update.
    :param status: ``Approved``, ``Rejected`` or ``PendingManualApproval``.
    :param description: Why (ApprovalDescription), e.g. the gate's reasons or the smoke test result.
    :param metadata: CustomerMetadataProperties to add, e.g. ``{"lambda_function": ...,
        "lambda_version": ...}`` on approval.
    :param aws_conn_id: The AWS connection ID to use
    """

    aws_hook_class = MnistSageMakerHook
    template_fields: Sequence[str] = aws_template_fields(
        "model_package_arn", "status", "description", "metadata"
    )

    def __init__(
        self,
        *,
        model_package_arn: str,
        status: str,
        description: str,
        metadata: Mapping[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.model_package_arn = model_package_arn
        self.status = status
        self.description = description
        self.metadata = metadata

    def execute(self, context: Context) -> dict:
        result = self.hook.set_package_status(
            self.model_package_arn, self.status, self.description, self.metadata
        )
        self.log.info(
            "%s %s: %s%s",
            self.model_package_arn,
            self.status,
            self.description,
            "" if result["changed"] else " (unchanged)",
        )
        return result
