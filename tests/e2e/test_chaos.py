"""The fault suite (`make chaos`): what a nightly run relies on, through the real scheduler.

Each scenario runs ``mnist_retraining`` on ``make demo``'s stack (PostgreSQL, localcloud, Airflow
standalone: ``demo_stack``), injects one fault (a killed localcloud, killed Airflow processes, a
failing canary, poison data, a cleared run, a person saying no) and then checks that the alias, the
model packages, the consumed batches and the run's audit record all tell the same story. Live
traffic runs against the endpoint throughout: no request may fail because the alias moved; requests
fail only while localcloud itself is down, or when they reach a version the scenario broke.

Training is real but quick (one epoch on 1,000 images); every scenario feeds its own nightly batch.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from tests.fixtures.poison import NOT_A_SHARD, deflate_bomb_batch, huge_header_batch, truncated_batch
from tests.fixtures.stack import Traffic, start_time

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

PUBLISH, SHIFT, ROLLBACK = "deploy.publish_lambda_version", "deploy.shift_canary", "rollback.rollback_alias"
# What the next scenario needs from an earlier one (a batch that must be found again, a run to clear).
handed_on: dict[str, str] = {}


@pytest.fixture(scope="module")
def stack(demo_stack):
    """The stack with a model serving (deployed here unless the browser test did) and live traffic.

    Data events are off while the scenarios run: each triggers its own run with its own Params, so
    a batch it feeds must not start a run by itself too (tests/e2e/test_closed_loop.py does that).
    """
    demo_stack.data_events(False)
    if demo_stack.alias() is None:
        run_id = demo_stack.trigger("chaos-first-deployment")
        demo_stack.wait_for(run_id)
        assert demo_stack.audit(run_id)["result"]["outcome"] == "deployed", demo_stack.states(run_id)
    # Clean digits, enough of them that their classes are in about the training proportions (the
    # first 50 are 0.16 off in total variation; the drift check's threshold is 0.25).
    pixels = demo_stack.mnist.test_images[:500].reshape(500, -1).astype(int).tolist()
    demo_stack.traffic = Traffic(demo_stack.infra["endpoint"], pixels).start()
    yield demo_stack
    demo_stack.traffic.stop()
    demo_stack.data_events(True)


def new_batches(record: dict) -> list[str]:
    return [batch["key"] for batch in (record["data"] or {}).get("accepted", [])]


def assert_deployed(stack, run_id: str) -> dict:
    """Alias fully on the run's version, its package Approved with that version, its batches
    consumed by it, and the audit record saying so."""
    record = stack.audit(run_id)
    assert record["result"]["outcome"] == "deployed", record["result"]
    version = record["deployment"]["lambda_version"]
    alias = stack.alias()
    assert (alias["version"], alias["weights"]) == (version, {})
    assert stack.packages()[run_id] == [{"status": "Approved", "lambda_version": version}]
    consumed = stack.consumed()
    assert new_batches(record) and all(consumed[key]["run_id"] == run_id for key in new_batches(record))
    # A deployed run alerts only for drift (the scenarios' quick models may see some), then once.
    assert record["alert"]["wanted"] is bool(record["monitoring"]["drift"]), record["alert"]
    assert len(stack.alerts(run_id)) == (1 if record["alert"]["wanted"] else 0)
    return record


def assert_not_deployed(stack, run_id: str, outcome: str, alias_at_start: dict) -> dict:
    """The alias exactly as the run found it, its package Rejected, its batches not consumed."""
    record = stack.audit(run_id)
    assert record["result"]["outcome"] == outcome, record["result"]
    alias = stack.alias()
    assert (alias["version"], alias["weights"]) == (alias_at_start["version"], {})
    assert [package["status"] for package in stack.packages()[run_id]] == ["Rejected"]
    consumed = stack.consumed()
    assert new_batches(record) and not any(key in consumed for key in new_batches(record))
    return record


def test_localcloud_killed_while_a_job_trains_restarts_the_job_and_the_run_deploys(stack):
    stack.feed()
    run_id = stack.trigger("chaos-localcloud-killed", epochs=3)
    deadline = time.monotonic() + 300
    while not any(job["SecondaryStatus"] == "Training" for job in stack.training_jobs(run_id)):
        assert time.monotonic() < deadline, f"no job started training: {stack.states(run_id)}"
        time.sleep(0.2)
    killed_at = time.time()
    below = stack.kill_localcloud()
    assert below, "localcloud ran no process while its job trained"
    time.sleep(2)
    survivors = {pid for pid, started in below.items() if start_time(pid) == started}
    assert not survivors, f"processes outlived the killed localcloud: {survivors}"
    stack.restart_localcloud()
    back_at = time.time()

    stack.wait_for(run_id, timeout_s=600)

    assert stack.run(run_id)["state"] == "success", stack.states(run_id)
    (job,) = stack.training_jobs(run_id)  # restarted in place: one job, no second attempt
    assert job["TrainingJobStatus"] == "Completed"
    transitions = [transition["Status"] for transition in job["SecondaryStatusTransitions"]]
    assert "Restarting" in transitions, transitions
    assert_deployed(stack, run_id)
    assert not stack.traffic.failures(0, killed_at) and not stack.traffic.failures(back_at + 5, time.time())


def test_airflow_killed_right_after_the_canary_shift_ends_deployed_or_rolled_back(stack):
    alias_at_start = stack.alias()
    stack.feed()
    started = time.time()
    run_id = stack.trigger("chaos-airflow-killed")
    stack.wait_for(run_id, until=lambda states: states.get(SHIFT) == "success")
    stack.kill_airflow()
    stack.restart_airflow()

    stack.wait_for(run_id, timeout_s=600)

    outcome = stack.audit(run_id)["result"]["outcome"]
    if outcome == "deployed":
        assert_deployed(stack, run_id)
    else:
        assert_not_deployed(stack, run_id, "rolled_back", alias_at_start)
    assert not stack.traffic.failures(started, time.time())


def test_a_canary_that_fails_is_rolled_back_and_clearing_the_rollback_changes_nothing(stack):
    alias_at_start = stack.alias()
    batch = stack.feed()
    started = time.time()
    run_id = stack.trigger("chaos-canary-fails")
    stack.wait_for(run_id, until=lambda states: states.get(PUBLISH) == "success")
    version = stack.xcom(run_id, PUBLISH)["version"]
    # Only what reaches the new version through the alias fails: the smoke test (the version
    # itself) passes, the canary does not.
    stack.inject(
        {
            "service": "lambda",
            "operation": "Invoke",
            "function_name": stack.config.lambda_function,
            "qualifier": stack.config.lambda_alias,
            "version": version,
            "error_message": "injected: the new version fails in production",
        }
    )
    try:
        states = stack.wait_for(run_id)
    finally:
        stack.clear_faults()
    rolled_back_at = time.time()

    assert stack.run(run_id)["state"] == "failed" and states[ROLLBACK] == "success", states
    assert stack.tries(run_id, "deploy.check_canary") == 1  # a failed canary is rolled back, not retried
    record = assert_not_deployed(stack, run_id, "rolled_back", alias_at_start)
    assert record["deployment"]["rollback"]["after"]["version"] == alias_at_start["version"]
    # Only requests the canary routed to the broken version failed, and only while it was live.
    assert all(status == 500 for _, status, _ in stack.traffic.failures(started, rolled_back_at))
    assert not stack.traffic.failures(rolled_back_at + 1, time.time())
    handed_on["unconsumed_batch"] = batch
    # Exactly one alert, with the rollback's reason, as `make alerts` shows it.
    (alert,) = stack.alerts(run_id)
    assert alert["Subject"] == f"mnist_retraining rolled_back: {run_id}"
    assert "Reason: rolled back: " in alert["Message"] and "/mnist-audit/" in alert["Message"]
    assert record["alert"]["sent"] is True, record["alert"]

    revision = stack.alias()["revision_id"]
    stack.clear(run_id, [ROLLBACK])
    stack.wait_for(run_id)
    assert stack.alias()["revision_id"] == revision  # the alias was not touched again
    assert [package["status"] for package in stack.packages()[run_id]] == ["Rejected"]
    assert len(stack.alerts(run_id)) == 1  # and no second alert


def test_poison_batches_are_quarantined_byte_identical_and_the_good_ones_trained_on(stack):
    images, labels = stack.mnist.train_images[6400:6500], stack.mnist.train_labels[6400:6500]
    poison = {}
    for number, data in zip(
        (9001, 9002, 9003, 9004),
        (truncated_batch(images, labels), huge_header_batch(), deflate_bomb_batch(), NOT_A_SHARD),
        strict=True,
    ):
        poison[stack.put_incoming(f"batch-{number}.npz", data)] = data
    good = stack.feed()
    started = time.time()
    run_id = stack.trigger("chaos-poison")

    stack.wait_for(run_id)

    assert stack.run(run_id)["state"] == "success", stack.states(run_id)
    record = assert_deployed(stack, run_id)
    quarantined = {batch["key"]: batch for batch in record["data"]["quarantined"]}
    assert set(quarantined) == set(poison)
    for key, data in poison.items():
        kept = stack.s3.get_object(Bucket=stack.config.bucket, Key=quarantined[key]["quarantine_key"])
        assert kept["Body"].read() == data, key
        assert quarantined[key]["sha256"] == hashlib.sha256(data).hexdigest()
    expected = {good, handed_on.get("unconsumed_batch", good)}  # the rolled-back night's batch, again
    assert expected <= set(new_batches(record))
    assert not stack.traffic.failures(started, time.time())
    handed_on["deployed_run"] = run_id


def everything_a_run_leaves(stack, run_id: str) -> dict:
    return {
        "jobs": [job["TrainingJobName"] for job in stack.training_jobs(run_id)],
        "packages": stack.packages(),
        "versions": stack.versions(),
        "alias": stack.alias(),
        "consumed": stack.consumed(),
    }


def test_clearing_a_whole_successful_run_repeats_nothing(stack):
    run_id = handed_on["deployed_run"]
    before = everything_a_run_leaves(stack, run_id)
    started = time.time()
    stack.clear(run_id)

    stack.wait_for(run_id, timeout_s=600)

    assert stack.run(run_id)["state"] == "success", stack.states(run_id)
    after = everything_a_run_leaves(stack, run_id)
    assert after == before  # same job, one package, same versions, alias (and its revision), consumed
    assert stack.audit(run_id)["result"]["outcome"] == "deployed"
    assert not stack.traffic.failures(started, time.time())


def test_a_person_rejecting_the_deployment_leaves_the_alias_alone(stack):
    alias_at_start = stack.alias()
    stack.feed()
    started = time.time()
    run_id = stack.trigger("chaos-person-rejects", require_approval=True)
    stack.wait_for(run_id, until=lambda states: states.get("gate.approve_deployment") == "awaiting_input")
    stack.respond(run_id, "gate.approve_deployment", "Reject")

    stack.wait_for(run_id)

    assert stack.run(run_id)["state"] == "success", stack.states(run_id)  # a decision, not a failure
    record = assert_not_deployed(stack, run_id, "rejected", alias_at_start)
    assert stack.alias()["revision_id"] == alias_at_start["revision_id"]
    assert record["decision"]["approval"]["chosen_options"] == ["Reject"]
    assert not stack.traffic.failures(started, time.time())
