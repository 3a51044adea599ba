"""The wait for the training job: in the triggerer (deferrable) or as a reschedule-mode sensor.

A reschedule-mode sensor is a task try per poke: each one is queued, started, and ended as
``up_for_reschedule`` by the scheduler, and a poke that starts before the scheduler has processed
the last one's end is failed by Airflow 3.3 ("task state changed externally", apache/airflow#71172),
which is why the poke interval cannot be short. Deferred, the task checks the job once and hands
the polling to the amazon provider's own :class:`SageMakerTrigger` in the triggerer: one task try
for the whole wait, any poke interval, and a trigger class every triggerer can import (it lives in
the provider, not in ``plugins/``).

:func:`training_wait_deferrable` reads which of the two a deployment wants
(``MNIST_TRAINING_WAIT``, read when the DAG is parsed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.sensors.sagemaker import SageMakerTrainingSensor
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.common.compat.sdk import AirflowException, AirflowSensorTimeout, conf

from mnist_pipeline.config import ConfigError

if TYPE_CHECKING:
    from airflow.sdk import Context

WAIT_MODES = ("deferrable", "reschedule")


def training_wait_deferrable(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the DAG waits for training in the triggerer (``MNIST_TRAINING_WAIT``, parse time).

    ``deferrable`` (the default) needs a running triggerer, as ``airflow standalone`` and the
    compose file have; ``reschedule`` polls from task tries, for a deployment without one.
    """
    environ = os.environ if environ is None else environ
    value = (environ.get("MNIST_TRAINING_WAIT") or "").strip().lower() or WAIT_MODES[0]
    if value not in WAIT_MODES:
        raise ConfigError(
            f"MNIST_TRAINING_WAIT: {value!r} is not one of {', '.join(WAIT_MODES)} (how to wait for training)"
        )
    return value == "deferrable"


class TrainingJobWait(SageMakerTrainingSensor):
    """
    Wait for a SageMaker training job to end; fail with its FailureReason unless it Completed.

    Not deferrable, this is the provider's ``SageMakerTrainingSensor`` as it is (``mode``,
    ``poke_interval``, ``timeout`` as usual). Deferrable, it checks the job once and, unless it has
    ended, defers to the provider's ``SageMakerTrigger`` (``job_type="training"``), which polls
    DescribeTrainingJob every ``poke_interval`` seconds for up to ``timeout``. When the trigger
    fires, the job is described once more and judged exactly as a poke judges it, so both modes end
    the same way for the same job:

    - Completed: success (nothing is pushed to XCom, as with the sensor);
    - Failed or Stopped: ``AirflowException`` naming the job, its status and its FailureReason;
    - still running when ``timeout`` is spent: ``AirflowSensorTimeout`` (no retry).

    A job that SageMaker restarts under its RetryStrategy stays InProgress (SecondaryStatus
    ``Restarting``): not an end, in either mode. If AWS cannot be reached for longer than botocore's
    retries last (the connection's ``config_kwargs`` ``retries`` setting), the trigger fails, and so
    does this try; the task's retry checks the job again and defers again, never starting anything.

    https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/sagemaker/client/describe_training_job.html

    :param job_name: The training job to wait for (templated).
    :param deferrable: Wait in the triggerer (default: ``[operators] default_deferrable``).
    :param kwargs: as for ``SageMakerTrainingSensor`` (``print_log``, ``poke_interval``,
        ``timeout``, ``mode``, ``aws_conn_id``...).
    """

    def __init__(
        self,
        *,
        job_name: str,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs,
    ):
        super().__init__(job_name=job_name, resource_type="training job", **kwargs)
        self.deferrable = deferrable

    def execute(self, context: Context) -> None:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        self.defer(
            trigger=SageMakerTrigger(
                job_name=self.job_name,
                job_type="training",
                waiter_delay=self.poke_interval,
                waiter_max_attempts=max(1, math.ceil(self.timeout / self.poke_interval)),
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                verify=self.verify,
                botocore_config=self.botocore_config,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> None:
        """The trigger says when to look; the job's description says how it ended."""
        event = validate_execute_complete_event(event)
        if self.poke(context):
            self.log.info("Training job %s completed.", self.job_name)
            return None
        status = self.last_description["TrainingJobStatus"]
        message = f"training job {self.job_name} is still {status}: the trigger ended with {event}"
        if event.get("status") == "timeout":
            raise AirflowSensorTimeout(f"{message} (timeout {self.timeout:g} s)")
        raise AirflowException(message)

    def get_failed_reason_from_response(self, response: dict) -> str:
        reason = response.get("FailureReason") or "no FailureReason given"
        return f"{response['TrainingJobName']} ended {response['TrainingJobStatus']}: {reason}"
