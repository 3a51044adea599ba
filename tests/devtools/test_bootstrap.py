"""The local cloud's bootstrap: the pipeline's bucket, lake, reference, function and group against
an in-process localcloud; the demo's HTTP API and nightly feed against a real `localcloud serve`."""

from __future__ import annotations

import pytest

from data_checks.reference import Reference
from devtools.bootstrap import (
    bootstrap,
    bootstrap_demo,
    client,
    feed_next_batch,
    find_endpoint,
    prepare_lake,
    start_localcloud,
    upload_lake,
)
from devtools.cli import curl_predict
from devtools.lake import LakePlan, seed_lake
from devtools.layout import BUCKET, DemoError
from devtools.mnist import Mnist
from devtools.processes import running_pid
from mnist_pipeline.config import PipelineConfig

LAMBDA_ROLE = "arn:aws:iam::000000000000:role/mnist-lambda"
SMALL_LAKE = LakePlan(base_size=1000, shard_size=500, batches=3, batch_size=200)


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


def test_starting_twice_keeps_the_running_localcloud(running_localcloud, capsys):
    first = running_pid(running_localcloud.run_dir, "localcloud")
    start_localcloud(running_localcloud)
    assert running_pid(running_localcloud.run_dir, "localcloud") == first
    assert "already running" in capsys.readouterr().out


def test_bootstrap_is_idempotent_and_feed_delivers_the_nightly_batches_in_order(running_localcloud, mnist):
    layout = running_localcloud
    small = Mnist(
        mnist.train_images[:2000], mnist.train_labels[:2000], mnist.test_images[:300], mnist.test_labels[:300]
    )
    prepare_lake(layout, small, SMALL_LAKE)

    first = bootstrap_demo(layout)
    again = bootstrap_demo(layout)

    assert again["api_id"] == first["api_id"] and again["uploaded"] == []
    assert (
        find_endpoint(layout)
        == first["endpoint"]
        == f"{layout.localcloud_url}/_aws/execute-api/{first['api_id']}/mnist"
    )
    s3 = client(layout, "s3")

    def incoming() -> list[str]:
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="data/incoming/").get("Contents", [])
        return [item["Key"].rsplit("/", 1)[1] for item in listed]

    assert incoming() == ["batch-0001.npz"]
    assert feed_next_batch(layout) == "data/incoming/batch-0002.npz"
    assert feed_next_batch(layout) == "data/incoming/batch-0003.npz"
    with pytest.raises(DemoError, match="every nightly batch has been fed"):
        feed_next_batch(layout)
    assert incoming() == ["batch-0001.npz", "batch-0002.npz", "batch-0003.npz"]
    assert bootstrap_demo(layout)["uploaded"] == []  # the fed batches are part of the lake now

    # Before a run has created the alias `live`, the route exists but has nothing to call.
    with pytest.raises(DemoError, match=r"answered HTTP [45]\d\d"):
        curl_predict(first["endpoint"], mnist.test_images[0].reshape(-1).tolist())
