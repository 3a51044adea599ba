"""monitor_traffic: the serving handler's own log lines, in localcloud's CloudWatch Logs, scored
against a reference computed from real MNIST: clean digits are no drift, inverted ones are."""

import contextlib
import io
import json
import time

import numpy as np
import pytest

from data_checks.reference import compute_reference
from mnist_pipeline import monitor
from mnist_pipeline.config import PipelineConfig
from tests.fixtures.plugin_aws import api_event, load_handler, write_model_dir

pytestmark = pytest.mark.slow  # starts localcloud in-process

CONFIG = PipelineConfig(
    bucket="mnist-monitor", region="us-east-1", sagemaker_role_arn="arn:aws:iam::123456789012:role/x"
)
GROUP = f"/aws/lambda/{CONFIG.lambda_function}"
LIVE = {"alias": {"exists": True, "version": "3", "weights": {}, "revision_id": "r"}}


@pytest.fixture(scope="module")
def reference(mnist):
    return compute_reference(mnist.train_images[:5000], mnist.train_labels[:5000])


@pytest.fixture(scope="module")
def serve(centroid_models, tmp_path_factory):
    """Answer requests with the real handler (version 3, a real ONNX model); return its log lines."""
    handler = load_handler(write_model_dir(tmp_path_factory.mktemp("model"), centroid_models["good"]), "3")

    def requests(images: np.ndarray, per_request: int = 8, *, through_the_api: bool = True) -> list[str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            for start in range(0, len(images), per_request):
                chunk = images[start : start + per_request].reshape(-1, 784).astype(int).tolist()
                body = {"inputs": chunk}
                handler(api_event(body) if through_the_api else body, None)
        return out.getvalue().splitlines()

    return requests


@pytest.fixture
def cloud(localcloud, reference):
    s3, logs = localcloud.client("s3"), localcloud.client("logs")
    s3.create_bucket(Bucket=CONFIG.bucket)
    s3.put_object(Bucket=CONFIG.bucket, Key=CONFIG.reference_key, Body=reference.to_json().encode())
    return s3, logs


def ship(logs, lines: list[str], timestamp_ms: int, stream: str = "2026/12/03/[3]abc") -> None:
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=GROUP)
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_stream(logGroupName=GROUP, logStreamName=stream)
    logs.put_log_events(
        logGroupName=GROUP,
        logStreamName=stream,
        logEvents=[{"timestamp": timestamp_ms, "message": line} for line in lines],
    )


def test_the_handler_logs_features_never_pixels(serve, mnist):
    (line,) = serve(mnist.test_images[:3], per_request=3)
    record = json.loads(line)
    assert set(record["features"]) == {"confidence", "pixel_mean", "nonzero_fraction"}
    assert all(len(column) == 3 for column in record["features"].values())
    assert record["model_sha256"] and len(record["predictions"]) == 3
    pixels = mnist.test_images[:3].reshape(3, -1)
    assert record["features"]["pixel_mean"] == pytest.approx(pixels.mean(axis=1), abs=1e-3)
    assert len(line) < 600, "a compact record: no pixel values"


def test_clean_traffic_is_no_drift_and_inverted_traffic_is(cloud, serve, mnist):
    s3, logs = cloud
    now = int(time.time() * 1000)
    ship(logs, serve(mnist.test_images[:400]), now - 60_000)
    clean = monitor.monitor_traffic(
        logs, s3, CONFIG, run_id="run-1", live=LIVE, thresholds=monitor.Thresholds(), now_ms=now
    )
    assert clean["status"] == "ok" and not clean["drift"], clean
    assert clean["samples"] == 400

    ship(logs, serve(255 - mnist.test_images[400:800]), now + 1_000)
    inverted = monitor.monitor_traffic(
        logs, s3, CONFIG, run_id="run-2", live=LIVE, thresholds=monitor.Thresholds(), now_ms=now + 60_000
    )
    assert inverted["drift"] and inverted["status"] == "drift"
    assert inverted["samples"] == 400, "the window starts where run-1's ended: only the inverted traffic"
    drifted = {feature["feature"] for feature in inverted["drifted_features"]}
    assert {"pixel_mean", "nonzero_fraction"} <= drifted
    assert inverted["prediction_shift"] > clean["prediction_shift"]
    document = json.loads(
        s3.get_object(Bucket=CONFIG.bucket, Key=CONFIG.monitoring_key("run-2"))["Body"].read()
    )
    assert document["window"] == {"start_ms": now, "end_ms": now + 60_000}
    assert (
        document["features"]["pixel_mean"]["observed"] > 150 > document["features"]["pixel_mean"]["expected"]
    )


def test_other_versions_too_few_samples_and_no_traffic(cloud, serve, mnist):
    s3, logs = cloud
    now = int(time.time() * 1000)
    none = monitor.monitor_traffic(
        logs, s3, CONFIG, run_id="r0", live=LIVE, thresholds=monitor.Thresholds(), now_ms=now
    )
    assert none["status"] == "no_traffic" and none["samples"] == 0, (
        "no log group yet is no traffic, not an error"
    )

    ship(logs, serve(255 - mnist.test_images[:40]), now + 1_000)
    few = monitor.monitor_traffic(
        logs, s3, CONFIG, run_id="r1", live=LIVE, thresholds=monitor.Thresholds(), now_ms=now + 2_000
    )
    assert few["status"] == "too_few_samples" and not few["drift"] and few["samples"] == 40

    other = {"alias": {"exists": True, "version": "4", "weights": {}, "revision_id": "r"}}
    ship(logs, serve(mnist.test_images[:80]), now + 3_000)
    unseen = monitor.monitor_traffic(
        logs, s3, CONFIG, run_id="r2", live=other, thresholds=monitor.Thresholds(), now_ms=now + 4_000
    )
    assert unseen["samples"] == 0, "version 3's traffic is not the live version 4's"


def test_every_page_is_read(cloud, serve, mnist):
    s3, logs = cloud
    now = int(time.time() * 1000)
    lines = serve(mnist.test_images[:200], per_request=1)  # 200 events
    for start in range(0, 200, 50):
        ship(logs, lines[start : start + 50], now - 10_000 + start)
    pages = list(
        logs.get_paginator("filter_log_events").paginate(
            logGroupName=GROUP, PaginationConfig={"PageSize": 50}
        )
    )
    result = monitor.monitor_traffic(
        logs, s3, CONFIG, run_id="p", live=LIVE, thresholds=monitor.Thresholds(), now_ms=now
    )
    assert result["samples"] == 200, f"{len(pages)} pages"


def test_thresholds_come_from_the_runs_params():
    thresholds = monitor.thresholds_from_params({"drift_feature_threshold": 2.5, "drift_min_samples": 10})
    assert thresholds.feature == 2.5 and thresholds.min_samples == 10
    assert thresholds.prediction == monitor.DRIFT_PARAMS["drift_prediction_threshold"]["default"]


def test_the_pipelines_own_direct_invokes_are_not_traffic(cloud, serve, mnist):
    """The smoke test and the canary invoke the function directly: only requests through the
    endpoint (API Gateway events) are clients' traffic."""
    s3, logs = cloud
    now = int(time.time() * 1000)
    ship(logs, serve(255 - mnist.test_images[:200], through_the_api=False), now - 2_000)
    ship(logs, serve(mnist.test_images[200:300]), now - 1_000)
    checked = monitor.monitor_traffic(
        logs, s3, CONFIG, run_id="run-1", live=LIVE, thresholds=monitor.Thresholds(), now_ms=now
    )
    assert checked["samples"] == 100 and not checked["drift"], checked
