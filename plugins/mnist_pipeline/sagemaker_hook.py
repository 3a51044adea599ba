"""The hook for the model registry: the run's package, the package a Lambda version came from,
and a package's approval status.

Each package carries ``CustomerMetadataProperties`` (dag_id, run_id, training_job,
snapshot_sha256, code_sha256, accuracy, and once deployed lambda_function and lambda_version):
the lookups read them. The lookup describes the group's packages newest first, one call each: a
retry finds its package at once; a new run reads them all, a few hundred calls after a year of
nightly runs. The operators are :mod:`mnist_pipeline.register`'s.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from botocore.exceptions import ClientError

from mnist_pipeline.train import tag_value

APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")
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


class MnistSageMakerHook(SageMakerHook):
    """
    ``SageMakerHook`` with the model registry's lookups and status change (the functions above,
    on this hook's client).

    :param kwargs: as for ``SageMakerHook`` (``aws_conn_id``, ``region_name``, ``verify``, ``config``).
    """

    def package_for_run(self, group: str, run_id: str) -> dict | None:
        """The package registered for this DAG run, or None."""
        return find_package_for_run(self.conn, group, run_id)

    def package_for_lambda_version(self, group: str, function_name: str, version: str) -> dict | None:
        """The Approved package deployed as ``function_name`` version ``version``, or None."""
        return find_package_for_lambda_version(self.conn, group, function_name, version)

    def set_package_status(
        self, package_arn: str, status: str, description: str, metadata: Mapping[str, Any] | None = None
    ) -> dict:
        """See :func:`set_package_status`."""
        return set_package_status(self.conn, package_arn, status, description, metadata)
