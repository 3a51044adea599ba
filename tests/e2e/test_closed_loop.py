"""The closed loop through the real scheduler: new data starts a run by itself, and live traffic
that stops looking like the training data is reported as drift on the next run.

On ``make demo``'s stack (``demo_stack``): the bucket's notification, localcloud's SQS, the data
events watcher in ``airflow standalone``'s triggerer, the asset-or-time schedule, and the endpoint
called through the HTTP API as clients call it. Runs nobody triggers take ``MNIST_RUN_DEFAULTS``
(the tests' quick training).
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest

from devtools.cli import wait_for_data_run
from mnist_pipeline import s3io

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
WAIT = "train.wait_for_training"
# What the next test needs from the first (the clean traffic's check).
handed_on: dict[str, dict] = {}


@pytest.fixture(scope="module")
def stack(demo_stack):
    demo_stack.data_events(True)
    if demo_stack.alias() is None:  # run alone: deploy a model first, so there is traffic to watch
        run_id = demo_stack.trigger("closed-loop-first-deployment")
        demo_stack.wait_for(run_id)
        assert demo_stack.audit(run_id)["result"]["outcome"] == "deployed", demo_stack.states(run_id)
    return demo_stack


def send(stack, images: np.ndarray) -> list[int]:
    return [stack.post(image.reshape(-1).astype(int).tolist())["prediction"] for image in images]


def test_new_batches_start_one_run_by_themselves_and_it_deploys(stack):
    send(stack, stack.mnist.test_images[:200])  # clean traffic since the last run
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    landed = time.monotonic()
    keys = [stack.feed(), stack.feed()]  # two batches landing together

    run = wait_for_data_run(stack.api, since, timeout_s=60, poll_s=0.25)
    started_after_s = time.monotonic() - landed
    run_id = run["dag_run_id"]
    stack.wait_for(run_id)

    assert stack.run(run_id)["state"] == "success", stack.states(run_id)
    # The training wait was deferred to the triggerer: one try, no reschedules.
    assert stack.tries(run_id, WAIT) == 1
    assert "deferred" in stack.task_log(run_id, WAIT).lower()
    record = stack.audit(run_id)
    assert record["result"]["outcome"] == "deployed", record["result"]
    assert record["trigger"] == {"kind": "asset", "object_keys": sorted(keys), "drift_triggered": False}
    # Its data step takes every batch no run consumed (after the fault suite: the rejected night's).
    assert set(keys) <= {batch["key"] for batch in record["data"]["accepted"]}
    alias = stack.alias()
    assert (alias["version"], alias["weights"]) == (record["deployment"]["lambda_version"], {})
    # One run for both batches, and the messages that started it were deleted by it.
    assert [found["dag_run_id"] for found in stack.runs_started_by_data(since)] == [run_id]
    assert stack.events_in_queue() == 0
    # Clean traffic is no drift, and a deployed run sends no alert.
    assert record["monitoring"]["status"] == "ok" and not record["monitoring"]["drift"], record["monitoring"]
    assert record["monitoring"]["samples"] >= 200
    assert stack.alerts(run_id) == []
    handed_on["clean"] = record["monitoring"]
    print(f"\nrun {run_id} started {started_after_s:.1f} s after the batches landed")


def test_inverted_traffic_is_drift_on_the_next_run_which_retrains_without_new_data(stack):
    inverted = 255 - stack.mnist.test_images[100:220]
    send(stack, inverted)

    run_id = stack.trigger("closed-loop-drift")
    stack.wait_for(run_id)

    record = stack.audit(run_id)
    monitoring = record["monitoring"]
    assert monitoring["drift"] is True and monitoring["status"] == "drift", monitoring
    drifted = {feature["feature"] for feature in monitoring["drifted_features"]}
    assert {"pixel_mean", "nonzero_fraction"} <= drifted, monitoring
    assert monitoring["samples"] == len(inverted), "only the clients' requests since the last run"
    if "clean" in handed_on:
        assert monitoring["prediction_shift"] > handed_on["clean"]["prediction_shift"], monitoring
    # No batch was new: drift alone made it train, so the champion was re-evaluated.
    assert record["data"]["accepted"] == []
    assert record["trigger"]["drift_triggered"] is True
    assert record["training"] is not None and record["decision"]["candidate"] is not None
    # The full report is in S3, and one alert said why.
    report = s3io.get_json(stack.s3, stack.config.bucket, stack.config.monitoring_key(run_id))
    assert report["drift"] is True and report["samples"] >= len(inverted)
    (alert,) = stack.alerts(run_id)
    assert "live traffic drifted" in alert["Message"], alert
