"""Bootstrapping a cloud for the pipeline (mnist_pipeline.bootstrap), against an in-process localcloud."""

from __future__ import annotations

import pytest

from data_checks.reference import Reference
from mnist_pipeline.bootstrap import bootstrap, upload_lake
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.dataset import LakePlan, Mnist, seed_lake

LAMBDA_ROLE = "arn:aws:iam::000000000000:role/mnist-lambda"


@pytest.fixture
def lake_dir(mnist, tmp_path):
    small = Mnist(
        mnist.train_images[:3000], mnist.train_labels[:3000], mnist.test_images[:500], mnist.test_labels[:500]
    )
    seed_lake(tmp_path / "lake", small, LakePlan(base_size=2000, shard_size=1000, batches=1, batch_size=1000))
    return tmp_path / "lake"


@pytest.fixture
def config(localcloud):
    return PipelineConfig(
        bucket="mnist-bootstrap-test",
        region=localcloud.config.region,
        sagemaker_role_arn="arn:aws:iam::000000000000:role/mnist-sagemaker",
        base_prefix="lake/base/",
    )


def test_bootstrap_lays_out_the_lake_and_creates_function_and_group(localcloud, config, lake_dir):
    s3, lambda_, sm = localcloud.client("s3"), localcloud.client("lambda"), localcloud.client("sagemaker")

    summary = bootstrap(s3, lambda_, sm, config, lake_dir, lambda_role_arn=LAMBDA_ROLE)

    assert summary["bucket_created"] is True
    assert sorted(summary["uploaded"]) == [
        "data/holdout/holdout-00000.npz",
        "data/incoming/batch-0001.npz",
        "lake/base/base-00000.npz",
        "lake/base/base-00001.npz",
    ]
    reference = s3.get_object(Bucket=config.bucket, Key=config.reference_key)["Body"].read()
    assert isinstance(Reference.from_json(reference), Reference)
    function = lambda_.get_function_configuration(FunctionName=config.lambda_function)
    assert function["State"] == "Active" and function["Handler"] == "handler.handler"
    # No alias until a run deploys: the first run has no champion and creates "live".
    assert lambda_.list_aliases(FunctionName=config.lambda_function)["Aliases"] == []
    group = sm.describe_model_package_group(ModelPackageGroupName=config.model_package_group)
    assert group["ModelPackageGroupArn"] == summary["package_group_arn"]


def test_bootstrapping_twice_changes_nothing(localcloud, config, lake_dir):
    s3, lambda_, sm = localcloud.client("s3"), localcloud.client("lambda"), localcloud.client("sagemaker")
    first = bootstrap(s3, lambda_, sm, config, lake_dir, lambda_role_arn=LAMBDA_ROLE)
    revision = lambda_.get_function_configuration(FunctionName=config.lambda_function)["RevisionId"]

    second = bootstrap(s3, lambda_, sm, config, lake_dir, lambda_role_arn=LAMBDA_ROLE)

    assert second["bucket_created"] is False and second["uploaded"] == []
    assert second["function_arn"] == first["function_arn"]
    assert second["package_group_arn"] == first["package_group_arn"]
    assert lambda_.get_function_configuration(FunctionName=config.lambda_function)["RevisionId"] == revision


def test_uploading_a_lake_that_was_never_seeded_names_the_directory(localcloud, config, tmp_path):
    s3 = localcloud.client("s3")
    s3.create_bucket(Bucket=config.bucket)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'empty' / 'base'}"):
        upload_lake(s3, config, tmp_path / "empty")
