"""Deferrable AWS tasks against localcloud, as the worker, the API server and the triggerer run them.

Each test runs the task's ``execute()`` until it defers (``TaskDeferred``), hands the trigger on
the way Airflow does (the worker serialises it, the API server stores it, the triggerer inflates
it from its class path), runs the trigger's ``run()`` async generator to its first event (the
provider's async hooks over aiobotocore, the ``aws_default`` connection at localcloud), and then
resumes the task with that event as the task runner does. The training jobs are real: the
SageMaker training toolkit runs a stand-in script that takes a second or two.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import EndpointConnectionError

from mnist_pipeline.config import ConfigError
from mnist_pipeline.training_wait import TrainingJobWait, training_wait_deferrable
from tests.fixtures.localcloud import first_event, use_as_aws_default
from tests.localcloud.test_awslambda import ECHO, make_zip
from tests.localcloud.test_awslambda import ROLE as LAMBDA_ROLE
from tests.localcloud.test_sagemaker import (
    BUCKET,
    RETRIED_TRAIN_PY,
    STAND_IN_CHANNELS,
    STAND_IN_SOURCE,
    STAND_IN_TRAIN_PY,
    job_request,
    source_tarball,
    training_pid,
    transitions,
)

# Fails after a second for a reason of its own (an AlgorithmError), which it reports as
# model_code/train.py does: in SM_OUTPUT_DIR/failure, SageMaker's FailureReason.
FAILING_TRAIN_PY = """
import os, pathlib, time
time.sleep(1)
reason = "the train channel holds no images"
(pathlib.Path(os.environ["SM_OUTPUT_DIR"]) / "failure").write_text(reason)
raise SystemExit(reason)
"""


@pytest.fixture
def sagemaker(localcloud, monkeypatch):
    """localcloud's SageMaker with the stand-in scripts uploaded, and aws_default pointing at it."""
    s3 = localcloud.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="data/train/part-0.bin", Body=b"\x00" * 16)
    for key, script in {
        "code/sourcedir.tar.gz": STAND_IN_TRAIN_PY,
        "code/failing.tar.gz": FAILING_TRAIN_PY,
        "code/retried.tar.gz": RETRIED_TRAIN_PY,
    }.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=source_tarball({"train.py": script}))
    use_as_aws_default(monkeypatch, localcloud.endpoint_url)
    return localcloud.client("sagemaker")


def start_job(sm, name: str, source: str = STAND_IN_SOURCE, **overrides) -> str:
    """Start a training job; by default the stand-in script, training for a second."""
    overrides.setdefault("HyperParameters", {"seconds": "1"})
    sm.create_training_job(**job_request(name, source, STAND_IN_CHANNELS, **overrides))
    return name


def deferral(task, context: dict | None = None):
    """Run ``task.execute()``, which must defer; return the ``TaskDeferred``."""
    from airflow.sdk.exceptions import TaskDeferred

    with pytest.raises(TaskDeferred) as excinfo:
        task.execute(context or {})
    return excinfo.value


def inflated(trigger):
    """The trigger as the triggerer builds it: serialised by the worker (serde), stored as JSON by the
    API server, decrypted, decoded and constructed from its class path by the triggerer."""
    from airflow._shared.module_loading import import_string
    from airflow.models.trigger import Trigger
    from airflow.sdk.serde import serialize
    from airflow.serialization.decoders import smart_decode_trigger_kwargs

    classpath, kwargs = trigger.serialize()
    stored = json.dumps(serialize(kwargs))
    decoded = {
        key: smart_decode_trigger_kwargs(value) for key, value in Trigger._decrypt_kwargs(stored).items()
    }
    return import_string(classpath)(**decoded)


def through_the_triggerer(task, deferred, context: dict | None = None):
    """Run the deferred trigger to its event, then resume the task with it; the task's result."""
    event = asyncio.run(first_event(inflated(deferred.trigger)))
    return task.resume_execution(
        deferred.method_name, {**(deferred.kwargs or {}), "event": event}, context or {}
    )


# --- the provider's own deferrable operators ---------------------------------------------------


@pytest.mark.slow
def test_the_providers_deferrable_training_operator_waits_in_the_triggerer(sagemaker):
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator

    request = job_request(
        "deferred-training", STAND_IN_SOURCE, STAND_IN_CHANNELS, HyperParameters={"seconds": "1"}
    )
    operator = SageMakerTrainingOperator(
        task_id="train_model", config=request, deferrable=True, print_log=False, check_interval=1
    )
    deferred = deferral(operator)
    assert type(deferred.trigger).__name__ == "SageMakerTrigger"
    assert (
        sagemaker.describe_training_job(TrainingJobName="deferred-training")["TrainingJobStatus"]
        == "InProgress"
    )

    result = through_the_triggerer(operator, deferred)
    assert result["Training"]["TrainingJobName"] == "deferred-training"
    assert result["Training"]["TrainingJobStatus"] == "Completed"
    assert result["Training"]["ModelArtifacts"]["S3ModelArtifacts"].endswith("/output/model.tar.gz")


@pytest.mark.slow
def test_the_providers_deferrable_lambda_create_waits_for_the_function_to_be_active(localcloud, monkeypatch):
    from airflow.providers.amazon.aws.operators.lambda_function import LambdaCreateFunctionOperator

    use_as_aws_default(monkeypatch, localcloud.endpoint_url)
    operator = LambdaCreateFunctionOperator(
        task_id="create_function",
        function_name="echo",
        runtime="python3.12",
        role=LAMBDA_ROLE,
        handler="app.handler",
        code={"ZipFile": make_zip({"app.py": ECHO})},
        wait_for_completion=True,
        deferrable=True,
        waiter_delay=1,
        waiter_max_attempts=30,
    )
    deferred = deferral(operator)
    assert type(deferred.trigger).__name__ == "LambdaCreateFunctionCompleteTrigger"

    arn = through_the_triggerer(operator, deferred)
    assert arn.endswith(":function:echo")
    configuration = localcloud.client("lambda").get_function(FunctionName="echo")["Configuration"]
    assert configuration["State"] == "Active"


# --- the DAG's wait for training ---------------------------------------------------------------


def wait_for(job: str, **kwargs) -> TrainingJobWait:
    return TrainingJobWait(
        task_id="wait_for_training", job_name=job, print_log=False, poke_interval=1, timeout=120, **kwargs
    )


class _FirstTry:
    """The task instance of a sensor's first reschedule-mode try: it has no earlier reschedule."""

    def get_first_reschedule_date(self, context):
        return None


@pytest.mark.slow
def test_a_deferred_wait_ends_when_the_job_completes(sagemaker):
    job = start_job(sagemaker, "completes")
    sensor = wait_for(job, deferrable=True)
    deferred = deferral(sensor)
    trigger = deferred.trigger
    # The provider's trigger, which any triggerer can import (plugins/ need not be on its path).
    assert type(trigger).__module__ == "airflow.providers.amazon.aws.triggers.sagemaker"
    assert (trigger.job_name, trigger.waiter_delay, trigger.attempts) == (job, 1, 120)
    assert deferred.timeout == timedelta(seconds=120)

    assert through_the_triggerer(sensor, deferred) is None
    assert sagemaker.describe_training_job(TrainingJobName=job)["TrainingJobStatus"] == "Completed"
    # A job that has already ended is judged at once, without deferring.
    assert wait_for(job, deferrable=True).execute({}) is None


@pytest.mark.slow
def test_a_failed_job_fails_the_wait_with_its_reason_in_both_modes(sagemaker):
    from airflow.providers.common.compat.sdk import AirflowException

    job = start_job(sagemaker, "fails", source=f"s3://{BUCKET}/code/failing.tar.gz")
    sensor = wait_for(job, deferrable=True)
    deferred = deferral(sensor)
    with pytest.raises(AirflowException) as deferred_failure:
        through_the_triggerer(sensor, deferred)
    message = str(deferred_failure.value)
    assert "fails ended Failed: AlgorithmError" in message
    assert "the train channel holds no images" in message

    # Reschedule mode, as the DAG had it, tells the same.
    with pytest.raises(AirflowException) as rescheduled_failure:
        wait_for(job, deferrable=False, mode="reschedule").execute({"ti": _FirstTry()})
    assert str(rescheduled_failure.value) == message


@pytest.mark.slow
def test_not_deferrable_it_reschedules_as_the_providers_sensor_does(sagemaker):
    from airflow.sdk.exceptions import AirflowRescheduleException

    job = start_job(sagemaker, "rescheduled", HyperParameters={"seconds": "30", "quiet": "true"})
    before = datetime.now(UTC)
    with pytest.raises(AirflowRescheduleException) as rescheduled:
        wait_for(job, deferrable=False, mode="reschedule").execute({"ti": _FirstTry()})
    # The try ends, to be started again a poke interval later (one task try per poke).
    assert before + timedelta(seconds=1) <= rescheduled.value.reschedule_date <= before + timedelta(seconds=5)
    sagemaker.stop_training_job(TrainingJobName=job)


@pytest.mark.slow
def test_a_job_restarted_while_localcloud_was_down_is_waited_for_again_on_the_tasks_retry(
    localcloud, sagemaker, tmp_path
):
    """localcloud stops while the trigger waits: the trigger fails (this try fails); localcloud comes back
    and restarts the job under its RetryStrategy (InProgress, "Restarting"); the task's retry checks the
    same job, defers again and succeeds when the second attempt completes."""
    marker = tmp_path / "attempts"  # RETRIED_TRAIN_PY runs long on its first attempt only
    job = start_job(
        sagemaker,
        "restarted",
        source=f"s3://{BUCKET}/code/retried.tar.gz",
        HyperParameters={"marker": json.dumps(str(marker))},
        RetryStrategy={"MaximumRetryAttempts": 2},
    )
    training_pid(localcloud, job)
    one_attempt = {"retries": {"mode": "standard", "max_attempts": 1}}  # fail at once, not after ~8 s
    sensor = wait_for(job, deferrable=True, botocore_config=one_attempt)
    deferred = deferral(sensor)

    localcloud.stop()
    with pytest.raises(EndpointConnectionError):
        asyncio.run(first_event(inflated(deferred.trigger)))

    localcloud.restart()
    retry = wait_for(job, deferrable=True, botocore_config=one_attempt)
    assert through_the_triggerer(retry, deferral(retry)) is None
    described = localcloud.client("sagemaker").describe_training_job(TrainingJobName=job)
    assert described["TrainingJobStatus"] == "Completed"
    assert "Restarting" in transitions(described)
    assert marker.read_text() == "2"


# --- the setting ---------------------------------------------------------------------------------


def test_the_wait_is_deferrable_unless_reschedule_mode_is_asked_for():
    assert training_wait_deferrable({}) is True
    assert training_wait_deferrable({"MNIST_TRAINING_WAIT": "deferrable"}) is True
    assert training_wait_deferrable({"MNIST_TRAINING_WAIT": " Reschedule "}) is False
    with pytest.raises(ConfigError, match="MNIST_TRAINING_WAIT: 'poke' is not one of deferrable, reschedule"):
        training_wait_deferrable({"MNIST_TRAINING_WAIT": "poke"})
