"""The SageMaker wire API (json protocol, X-Amz-Target "SageMaker.<Operation>")."""

from __future__ import annotations

from typing import Any

from localcloud.sagemaker.backend import SageMakerBackend
from localcloud.service import Service, operation
from localcloud.wire import Request


class SageMakerService(Service):
    model_name = "sagemaker"
    validation_error_code = "ValidationException"
    internal_error_code = "InternalFailure"
    backend: SageMakerBackend

    # --- training jobs -----------------------------------------------------------------------------

    @operation("CreateTrainingJob")
    def create_training_job(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return {"TrainingJobArn": self.backend.training.create(params)}

    @operation("DescribeTrainingJob")
    def describe_training_job(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.training.describe(params["TrainingJobName"])

    @operation("ListTrainingJobs")
    def list_training_jobs(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        summaries, token = self.backend.training.list(params)
        return {"TrainingJobSummaries": summaries, "NextToken": token}

    @operation("StopTrainingJob")
    def stop_training_job(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.training.stop_job(params["TrainingJobName"])
        return {}

    # --- model registry ----------------------------------------------------------------------------

    @operation("CreateModelPackageGroup")
    def create_model_package_group(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        arn = self.backend.registry.create_group(
            params["ModelPackageGroupName"],
            params.get("ModelPackageGroupDescription"),
            params.get("Tags", []),
        )
        return {"ModelPackageGroupArn": arn}

    @operation("DescribeModelPackageGroup")
    def describe_model_package_group(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.registry.describe_group(params["ModelPackageGroupName"])

    @operation("ListModelPackageGroups")
    def list_model_package_groups(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        summaries, token = self.backend.registry.list_groups(params)
        return {"ModelPackageGroupSummaryList": summaries, "NextToken": token}

    @operation("DeleteModelPackageGroup")
    def delete_model_package_group(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.registry.delete_group(params["ModelPackageGroupName"])
        return {}

    @operation("CreateModelPackage")
    def create_model_package(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return {"ModelPackageArn": self.backend.registry.create_package(params)}

    @operation("DescribeModelPackage")
    def describe_model_package(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.registry.describe_package(params["ModelPackageName"])

    @operation("ListModelPackages")
    def list_model_packages(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        summaries, token = self.backend.registry.list_packages(params)
        return {"ModelPackageSummaryList": summaries, "NextToken": token}

    @operation("UpdateModelPackage")
    def update_model_package(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return {"ModelPackageArn": self.backend.registry.update_package(params)}

    # --- tags --------------------------------------------------------------------------------------

    @operation("AddTags")
    def add_tags(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return {"Tags": self.backend.add_tags(params["ResourceArn"], params["Tags"])}

    @operation("ListTags")
    def list_tags(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        tags, token = self.backend.list_tags(
            params["ResourceArn"], params.get("NextToken"), params.get("MaxResults")
        )
        return {"Tags": tags, "NextToken": token}

    @operation("DeleteTags")
    def delete_tags(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.delete_tags(params["ResourceArn"], params["TagKeys"])
        return {}
