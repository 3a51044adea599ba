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
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.operators.sagemaker import SageMakerRegisterModelVersionOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from botocore.exceptions import ClientError

from mnist_pipeline.train import tag_value

if TYPE_CHECKING:
    from airflow.sdk import Context

APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")
CONTENT_TYPE = "application/json"
_DESCRIPTION_MAX = 1024


def metadata_value(value: Any) -> str:
    """A value SageMaker accepts in CustomerMetadataProperties (the tag character set)."""
    return tag_value(value)


def iter_packages(sm, group: str, approval_status: str | None = None) -> Iterator[dict]:
    """Describe the group's packages, newest first; nothing if the group does not exist."""
    arguments = {"ModelPackageGroupName": group, "SortBy": "CreationTime", "SortOrder": "Descending"}
    if approval_status:
        arguments["ModelApprovalStatus"] = approval_status
    try:
        for page in sm.get_paginator("list_model_packages").paginate(**arguments):
            for summary in page["ModelPackageSummaryList"]:
                yield sm.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
    except ClientError as error:
        if error.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
            return
        raise


def find_package_for_run(sm, group: str, run_id: str) -> dict | None:
    """The package registered for this DAG run, or None."""
    wanted = metadata_value(run_id)
    for package in iter_packages(sm, group):
        if (package.get("CustomerMetadataProperties") or {}).get("run_id") == wanted:
            return package
    return None


def find_package_for_lambda_version(sm, group: str, function_name: str, version: str) -> dict | None:
    """The Approved package deployed as ``function_name`` version ``version``, or None."""
    for package in iter_packages(sm, group, approval_status="Approved"):
        metadata = package.get("CustomerMetadataProperties") or {}
        if metadata.get("lambda_function") == function_name and metadata.get("lambda_version") == str(
            version
        ):
            return package
    return None


def model_data_url(package: dict) -> str:
    """The S3 URI of the package's model.tar.gz."""
    return package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]


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
        existing = find_package_for_run(self.hook.conn, self.package_group_name, self.run_id)
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


def set_package_status(
    sm, package_arn: str, status: str, description: str, metadata: Mapping[str, Any] | None = None
) -> dict:
    """Set a package's approval status (and add metadata); no call when it is already so.

    Metadata is merged into the package's existing CustomerMetadataProperties.

    :return: ``{"model_package_arn", "status", "description", "changed"}``.
    """
    if status not in APPROVAL_STATUSES:
        raise ValueError(f"status must be one of {APPROVAL_STATUSES}, got {status!r}")
    package = sm.describe_model_package(ModelPackageName=package_arn)
    existing = package.get("CustomerMetadataProperties") or {}
    merged = {**existing, **{key: metadata_value(value) for key, value in (metadata or {}).items()}}
    description = description[:_DESCRIPTION_MAX]
    changed = (package.get("ModelApprovalStatus"), package.get("ApprovalDescription"), existing) != (
        status,
        description,
        merged,
    )
    if changed:
        arguments = {
            "ModelPackageArn": package_arn,
            "ModelApprovalStatus": status,
            "ApprovalDescription": description,
        }
        if merged != existing:
            arguments["CustomerMetadataProperties"] = merged
        sm.update_model_package(**arguments)
    return {
        "model_package_arn": package_arn,
        "status": status,
        "description": description,
        "changed": changed,
    }


class ModelPackageStatusOperator(AwsBaseOperator[SageMakerHook]):
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

    aws_hook_class = SageMakerHook
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
        result = set_package_status(
            self.hook.conn, self.model_package_arn, self.status, self.description, self.metadata
        )
        self.log.info(
            "%s %s: %s%s",
            self.model_package_arn,
            self.status,
            self.description,
            "" if result["changed"] else " (unchanged)",
        )
        return result
