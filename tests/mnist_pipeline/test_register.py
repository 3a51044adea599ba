"""The model registry (moto SageMaker): one package per run, linked to it; status updates once."""

import boto3
import pytest

from mnist_pipeline import sagemaker_hook as registry
from mnist_pipeline.register import ModelPackageStatusOperator, RegisterModelPackageOperator
from tests.fixtures.plugin_aws import REGION

GROUP = "mnist-classifier"
RUN_1 = "scheduled__2025-01-01T02:00:00+00:00"
RUN_2 = "manual__2025-01-01T09:30:00+00:00"


def register(run_id, job="job-1"):
    operator = RegisterModelPackageOperator(
        task_id="register_model",
        run_id=run_id,
        image_uri="763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.6-cpu-py312",
        model_url=f"s3://mnist-pipeline-test/training/{job}/output/model.tar.gz",
        package_group_name=GROUP,
        package_desc=f"{job} from {run_id}",
        evaluation_uri=f"s3://mnist-pipeline-test/evaluations/{job}/evaluation.json",
        customer_metadata={"training_job": job, "snapshot_sha256": "ab" * 32, "accuracy": 0.9921},
        aws_conn_id=None,
        region_name=REGION,
    )
    return operator.execute({})


@pytest.fixture
def sm(aws):
    return boto3.client("sagemaker", region_name=REGION)


def packages(sm):
    return sm.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]


def test_a_package_carries_its_metrics_and_links_to_the_run(sm):
    arn = register(RUN_1)
    package = sm.describe_model_package(ModelPackageName=arn)
    assert package["CustomerMetadataProperties"] == {
        "run_id": RUN_1,
        "training_job": "job-1",
        "snapshot_sha256": "ab" * 32,
        "accuracy": "0.9921",
    }
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"] == {
        "ContentType": "application/json",
        "S3Uri": "s3://mnist-pipeline-test/evaluations/job-1/evaluation.json",
    }
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    assert registry.model_data_url(package) == "s3://mnist-pipeline-test/training/job-1/output/model.tar.gz"


def test_a_retried_registration_returns_the_same_package(sm):
    first = register(RUN_1)
    assert register(RUN_1) == first
    assert len(packages(sm)) == 1


def test_each_run_gets_its_own_package_in_the_existing_group(sm):
    first, second = register(RUN_1), register(RUN_2, job="job-2")
    assert first != second
    assert registry.find_package_for_run(sm, GROUP, RUN_2)["ModelPackageArn"] == second
    assert len(packages(sm)) == 2


def test_approval_records_the_lambda_version_and_is_applied_once(sm):
    arn = register(RUN_1)
    metadata = {"lambda_function": "mnist-classifier", "lambda_version": 4}
    first = registry.set_package_status(sm, arn, "Approved", "smoke test 100/100; canary 20/20", metadata)
    again = registry.set_package_status(sm, arn, "Approved", "smoke test 100/100; canary 20/20", metadata)

    assert (first["changed"], again["changed"]) == (True, False)
    package = sm.describe_model_package(ModelPackageName=arn)
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["CustomerMetadataProperties"]["lambda_version"] == "4"
    assert package["CustomerMetadataProperties"]["run_id"] == RUN_1  # merged, not replaced
    found = registry.find_package_for_lambda_version(sm, GROUP, "mnist-classifier", "4")
    assert found["ModelPackageArn"] == arn


def test_a_rejected_package_is_not_a_champion(sm):
    arn = register(RUN_1)
    registry.set_package_status(
        sm, arn, "Approved", "deployed", {"lambda_function": "mnist-classifier", "lambda_version": "4"}
    )
    registry.set_package_status(sm, arn, "Rejected", "canary failed: 3 of 20 calls answered 500")
    assert sm.describe_model_package(ModelPackageName=arn)["ApprovalDescription"].startswith("canary failed")
    assert registry.find_package_for_lambda_version(sm, GROUP, "mnist-classifier", "4") is None


def test_the_status_operator_reports_what_it_did(sm):
    arn = register(RUN_1)
    operator = ModelPackageStatusOperator(
        task_id="reject_model",
        model_package_arn=arn,
        status="Rejected",
        description="accuracy 0.9850 < min_accuracy 0.9900",
        aws_conn_id=None,
        region_name=REGION,
    )
    assert operator.execute({}) == {
        "model_package_arn": arn,
        "status": "Rejected",
        "description": "accuracy 0.9850 < min_accuracy 0.9900",
        "changed": True,
    }
    with pytest.raises(ValueError, match="status must be one of"):
        registry.set_package_status(sm, arn, "Deployed", "x")


def test_no_group_means_no_package_rather_than_an_error(sm):
    assert registry.find_package_for_run(sm, "no-such-group", RUN_1) is None
