"""Evaluation: exact scoring of model.onnx, the champion, the gate's record, the reports."""

import hashlib
import json

import boto3
import numpy as np
import pytest

from mnist_pipeline import evaluate, live_alias, sagemaker_hook
from tests.fixtures.plugin_aws import (
    REGION,
    centroid_predictions,
    model_tar_gz,
    put_shard,
    write_model_dir,
)

RUN_ID = "manual__2025-01-03T10:00:00+00:00"


# --- scoring --------------------------------------------------------------------------------------------


def test_scores_match_an_independent_computation_on_real_digits(tmp_path, mnist, centroid_models):
    model_dir = write_model_dir(tmp_path / "model", centroid_models["good"])
    images, labels = mnist.test_images[:2000], mnist.test_labels[:2000]

    metrics = evaluate.evaluate_onnx(model_dir, images, labels, latency_samples=50)

    expected = centroid_predictions(mnist.train_images[:10_000], mnist.train_labels[:10_000], images)
    assert metrics["accuracy"] == pytest.approx(float((expected == labels).mean()), abs=1 / 2000)
    assert 0.75 < metrics["accuracy"] < 0.9  # nearest centroid on MNIST
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.sum() == 2000
    assert confusion.sum(axis=1).tolist() == np.bincount(labels, minlength=10).tolist()
    for digit in range(10):
        assert metrics["per_class_accuracy"][digit] == pytest.approx(
            confusion[digit, digit] / confusion[digit].sum()
        )
    assert 0 < metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p99"]
    assert metrics["latency_ms"]["samples"] == 50


def test_classification_metrics_mark_a_class_without_examples():
    metrics = evaluate.classification_metrics(np.array([0, 0, 1]), np.array([0, 1, 1]))
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["per_class_accuracy"][:3] == [0.5, 1.0, None]
    assert metrics["confusion_matrix"][0][:2] == [1, 1]


# --- the run's evaluation (moto) -------------------------------------------------------------------


@pytest.fixture
def evaluation_world(s3, pipeline_config, mnist, tmp_path, centroid_models):
    """The holdout in S3, two model artifacts, a Lambda alias and an empty register."""
    bucket = pipeline_config.bucket
    put_shard(
        s3, bucket, "data/holdout/holdout-00000.npz", mnist.test_images[:1000], mnist.test_labels[:1000]
    )
    put_shard(
        s3,
        bucket,
        "data/holdout/holdout-00001.npz",
        mnist.test_images[1000:1500],
        mnist.test_labels[1000:1500],
    )
    uris = {}
    for name, model in centroid_models.items():
        key = f"training/{name}/output/model.tar.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=model_tar_gz(write_model_dir(tmp_path / name, model)))
        uris[name] = pipeline_config.s3_uri(key)
    clients = {
        "lambda": boto3.client("lambda", region_name=REGION),
        "sagemaker": boto3.client("sagemaker", region_name=REGION),
        "iam": boto3.client("iam", region_name=REGION),
    }
    role = clients["iam"].create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    clients["lambda"].create_function(
        FunctionName=pipeline_config.lambda_function,
        Runtime="python3.12",
        Role=role,
        Handler="handler.handler",
        Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18},
    )
    return uris, clients


def run_evaluation(s3, config, clients, model_uri, **thresholds):
    live = live_alias.inspect_live_alias(clients["lambda"], clients["sagemaker"], config)
    return evaluate.evaluate_run(
        s3,
        config,
        live=live,
        run_id=RUN_ID,
        training_job="job-2",
        model_uri=model_uri,
        min_accuracy=thresholds.get("min_accuracy", 0.3),
        max_regression=thresholds.get("max_regression", 0.002),
    )


def make_champion(config, clients, model_uri):
    """Deploy version 1 behind the alias and record it on an Approved package, as a deployed run does."""
    lambda_client, sm = clients["lambda"], clients["sagemaker"]
    lambda_client.publish_version(FunctionName=config.lambda_function)
    lambda_client.create_alias(
        FunctionName=config.lambda_function, Name=config.lambda_alias, FunctionVersion="1"
    )
    sm.create_model_package_group(ModelPackageGroupName=config.model_package_group)
    arn = sm.create_model_package(
        ModelPackageGroupName=config.model_package_group,
        InferenceSpecification={
            "Containers": [{"Image": "image", "ModelDataUrl": model_uri}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        CustomerMetadataProperties={"run_id": "manual__earlier"},
    )["ModelPackageArn"]
    sagemaker_hook.set_package_status(
        sm, arn, "Approved", "deployed", {"lambda_function": config.lambda_function, "lambda_version": "1"}
    )
    return arn


def test_a_first_model_is_evaluated_and_the_reports_written(s3, pipeline_config, evaluation_world):
    uris, clients = evaluation_world
    result = run_evaluation(s3, pipeline_config, clients, uris["good"])

    assert result["champion"] is None
    assert result["gate"]["approved"] is True
    assert result["holdout"]["rows"] == 1500
    assert [shard["key"] for shard in result["holdout"]["shards"]] == [
        "data/holdout/holdout-00000.npz",
        "data/holdout/holdout-00001.npz",
    ]
    assert result["examples_uri"] == "s3://mnist-pipeline-test/data/holdout/holdout-00000.npz"
    prefix = pipeline_config.evaluation_prefix(RUN_ID)
    stored = json.loads(
        s3.get_object(Bucket=pipeline_config.bucket, Key=prefix + "evaluation.json")["Body"].read()
    )
    assert stored["candidate"]["accuracy"] == result["candidate"]["accuracy"]
    report = s3.get_object(Bucket=pipeline_config.bucket, Key=prefix + "report.md")["Body"].read().decode()
    assert "## Decision: APPROVED" in report
    assert f"| accuracy | {result['candidate']['accuracy']:.4f} | - |" in report


def test_the_files_the_lambda_zip_needs_are_kept_from_the_scored_artifact(
    s3, pipeline_config, evaluation_world, tmp_path, centroid_models
):
    uris, clients = evaluation_world
    result = run_evaluation(s3, pipeline_config, clients, uris["good"])

    prefix = pipeline_config.evaluation_prefix(RUN_ID) + "model/"
    files = result["model_files"]
    assert {name: record["key"] for name, record in files.items()} == {
        "model.onnx": prefix + "model.onnx",
        "model_card.json": prefix + "model_card.json",
    }
    assert files["model.onnx"]["sha256"] == result["model_sha256"] == result["candidate"]["model_sha256"]
    for name, record in files.items():
        kept = s3.get_object(Bucket=pipeline_config.bucket, Key=record["key"])["Body"].read()
        assert kept == (tmp_path / "good" / name).read_bytes()
        assert hashlib.sha256(kept).hexdigest() == record["sha256"]
    stored = json.loads(
        s3.get_object(
            Bucket=pipeline_config.bucket, Key=pipeline_config.evaluation_prefix(RUN_ID) + "evaluation.json"
        )["Body"].read()
    )
    assert stored["model_files"] == files


def test_a_model_worse_than_the_champion_is_rejected_with_both_accuracies(
    s3, pipeline_config, evaluation_world
):
    uris, clients = evaluation_world
    package = make_champion(pipeline_config, clients, uris["good"])

    result = run_evaluation(s3, pipeline_config, clients, uris["weak"])

    assert result["champion"]["lambda_version"] == "1"
    assert result["champion"]["model_package_arn"] == package
    champion_accuracy = result["champion"]["metrics"]["accuracy"]
    assert champion_accuracy > result["candidate"]["accuracy"]
    assert result["gate"]["approved"] is False
    assert f"< champion {champion_accuracy:.4f} - max_regression 0.0020" in result["gate"]["reasons"][1]


def test_a_live_version_no_approved_package_records_is_no_champion_and_blocks_the_gate(
    s3, pipeline_config, evaluation_world
):
    uris, clients = evaluation_world
    clients["lambda"].publish_version(FunctionName=pipeline_config.lambda_function)  # deployed by hand
    clients["lambda"].create_alias(
        FunctionName=pipeline_config.lambda_function, Name=pipeline_config.lambda_alias, FunctionVersion="1"
    )
    result = run_evaluation(s3, pipeline_config, clients, uris["good"])

    assert result["champion"] == {"lambda_version": "1", "model_package_arn": None, "model_uri": None}
    assert result["champion_version"] is None
    assert result["gate"]["approved"] is False  # a good model, but the live alias is not ours to move
    assert (
        "deployment blocked: alias live points at version 1, which no Approved model package"
        in result["gate"]["reasons"][-1]
    )


def test_an_alias_on_the_infrastructure_placeholder_is_a_first_deployment(
    s3, pipeline_config, evaluation_world
):
    uris, clients = evaluation_world
    function = pipeline_config.lambda_function
    clients["lambda"].publish_version(FunctionName=function, Description=live_alias.PLACEHOLDER_DESCRIPTION)
    clients["lambda"].create_alias(
        FunctionName=function, Name=pipeline_config.lambda_alias, FunctionVersion="1"
    )

    result = run_evaluation(s3, pipeline_config, clients, uris["good"])

    assert result["gate"]["approved"] is True
    assert result["live_alias"]["placeholder"] is True
    assert "is the infrastructure's placeholder (no model)" in result["gate"]["reasons"][1]


def test_leftover_canary_weights_block_the_gate_and_the_champion_is_not_compared(
    s3, pipeline_config, evaluation_world
):
    uris, clients = evaluation_world
    make_champion(pipeline_config, clients, uris["weak"])
    clients["lambda"].update_function_configuration(FunctionName=pipeline_config.lambda_function, Timeout=9)
    clients["lambda"].publish_version(FunctionName=pipeline_config.lambda_function)  # version 2
    clients["lambda"].update_alias(
        FunctionName=pipeline_config.lambda_function,
        Name=pipeline_config.lambda_alias,
        RoutingConfig={"AdditionalVersionWeights": {"2": 0.1}},
    )

    result = run_evaluation(s3, pipeline_config, clients, uris["good"])

    assert result["gate"]["approved"] is False
    assert "metrics" not in result["champion"]
    assert any(
        "alias live still routes {'2': 0.1} beside version 1: a deployment did not finish" in reason
        for reason in result["gate"]["reasons"]
    )


def test_a_missing_model_artifact_is_named(s3, pipeline_config, evaluation_world):
    _, clients = evaluation_world
    with pytest.raises(
        FileNotFoundError, match="model artifact s3://mnist-pipeline-test/training/nope.tar.gz"
    ):
        run_evaluation(s3, pipeline_config, clients, "s3://mnist-pipeline-test/training/nope.tar.gz")
