"""SageMaker training jobs: the API's state machine, and a real run of every job with the official toolkit.

CreateTrainingJob stores the job (InProgress/Starting) and starts one runner thread for it. The runner:

1. waits for a slot (at most `max_running` jobs train at once; the others stay in Starting);
2. Downloading: copies every channel from localcloud's S3 into ``input/data/<channel>/`` (File mode;
   FastFile is served the same way), ``S3Prefix`` or ``ManifestFile``, and restores checkpoints;
3. Training: runs ``sagemaker-training``'s ``train`` entry point on the job directory
   (localcloud.training_runtime), which fetches ``sagemaker_submit_directory`` from localcloud's S3
   itself; stdout/stderr go line by line to CloudWatch Logs (``/aws/sagemaker/TrainingJobs``, stream
   ``<job>/algo-1-<epoch>``) and through the MetricDefinitions regexes into FinalMetricDataList;
4. Uploading: packs the model dir as ``<S3OutputPath>/<job>/output/model.tar.gz``; output/failure
   becomes FailureReason.

StopTrainingJob, MaxRuntimeInSeconds and (spot) MaxWaitTimeInSeconds stop the whole process tree:
SIGTERM, then SIGKILL after a grace period, as SageMaker does. Whatever the model dir holds by then is
still uploaded. Every state change is written to the store at once.

A job's processes never outlive localcloud (localcloud.processes): the runner thread that starts the
toolkit lives until the toolkit's whole process group has ended, the group is SIGKILLed when localcloud
dies, and it is recorded until it ends, so the next start reaps whatever escaped. A job that was running
when localcloud stopped (or died) is, on the next start, Failed with INTERRUPTED as after a host
failure, unless its RetryStrategy has attempts left: SageMaker retries a job that failed for an internal
reason, and so the job restarts in place under the same name ("Restarting ... (attempt 2 of 3)" in its
SecondaryStatusTransitions), with a fresh job directory and its checkpoints restored. A job that failed
for its own reasons (AlgorithmError, ClientError) is never retried.

The host's Python environment runs the job: TrainingImage is recorded, never pulled. The job sees
AWS_ENDPOINT_URL/S3_ENDPOINT_URL pointing at localcloud and dummy credentials (the host's AWS
profile and session token are removed), and PIP_NO_INDEX=1, so the toolkit's ``pip install -r
requirements.txt`` is a quick no-op when the environment already has the pins and fails fast,
without the network, when it does not. A GPU is used when the host has one (the toolkit counts GPUs
with nvidia-smi and sets SM_NUM_GPUS).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from localcloud.files import UnsafePath, safe_join
from localcloud.processes import ProcessGroups, end_group, leader_exited, signal_group
from localcloud.sagemaker.common import (
    ROLE_ARN_PATTERN,
    SORT_ORDERS,
    Arns,
    TagStore,
    check_choice,
    check_max_results,
    check_name,
    check_tags,
    constraint_error,
    echoed,
    now,
    parse_s3_uri,
    sort_and_page,
    time_filter,
    validation_error,
)
from localcloud.training_runtime import (
    FAILURE_REASON_LIMIT,
    JobPaths,
    collect_result,
    pack_model,
    prepare_job_dir,
    start_training,
    stop_training,
)
from localcloud.wire import CHUNK_BYTES, ServiceError

if TYPE_CHECKING:
    from localcloud.config import Config
    from localcloud.logs import LogsBackend
    from localcloud.s3 import S3Backend
    from localcloud.store import Store

logger = logging.getLogger("localcloud")

JOB_KIND = "sagemaker/training-job"  # key: the job name in lower case (names are unique regardless of case)
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
HOST = "algo-1"
INTERRUPTED = "interrupted: localcloud stopped while the job was running"
MAX_RETRY_ATTEMPTS = 30  # RetryStrategy.MaximumRetryAttempts: 1..30, as on SageMaker
DEFAULT_MAX_RUNTIME_S = 86_400  # SageMaker's default when StoppingCondition is left out
ACTIVE_STATUSES = ("InProgress", "Stopping")
JOB_STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped", "Deleting")
LIST_SORT_KEYS = ("Name", "CreationTime", "Status")
TERMINAL_SECONDARY = ("Completed", "Failed", "Stopped", "MaxRuntimeExceeded", "MaxWaitTimeExceeded")
# The job's process sees localcloud's endpoint and credentials, never the host's AWS identity.
HOST_AWS_SETTINGS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)
# The job directory layout is localcloud's to set.
PROTECTED_ENVIRONMENT = ("SAGEMAKER_BASE_DIR", "SM_STUDIO_LOCAL_MODE")
PIP_HINT = (
    " -- localcloud runs jobs in its own Python environment without a package index (PIP_NO_INDEX=1): "
    "install the source dir's requirements.txt there; pip's error is in the job log"
)
LOG_BATCH_LINES = 1000
LOG_FLUSH_S = 0.25


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its final status, secondary status, transition message and FailureReason."""

    status: str
    secondary: str
    message: str
    failure_reason: str | None = None
    upload_model: bool = False


class JobEnded(Exception):
    """Raised inside a runner to end the job early with `outcome`."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def client_error(message: str) -> JobEnded:
    """A job failure caused by the job's own settings or data (SageMaker says "ClientError: ...")."""
    return JobEnded(Outcome("Failed", "Failed", "Training job failed", f"ClientError: {message}"))


class TrainingJobs:
    """Training jobs of one localcloud: the API's state in the store, one runner thread per live job."""

    def __init__(
        self,
        store: Store,
        config: Config,
        s3: S3Backend,
        logs: LogsBackend,
        tags: TagStore,
        *,
        max_running: int,
        stop_grace_s: float,
    ) -> None:
        if max_running < 1:
            raise ValueError(f"max_running must be at least 1, got {max_running}")
        self.store = store
        self.config = config
        self.s3 = s3
        self.logs = logs
        self.tags = tags
        self.arns = Arns(config)
        self.max_running = max_running
        self.stop_grace_s = stop_grace_s
        self.endpoint_url = ""
        self.jobs_dir = store.service_dir("sagemaker") / "training-jobs"
        self.processes = ProcessGroups(store)
        self._runs: dict[str, JobRun] = {}
        self._runs_lock = threading.Lock()
        self._slots = threading.Condition()
        self._waiting: deque[str] = deque()
        self._running = 0

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, endpoint_url: str) -> None:
        """Restart, or fail, the jobs a previous localcloud left running.

        Their processes are gone by now: LocalCloud.start() reaps recorded process groups first.
        """
        self.endpoint_url = endpoint_url
        left = [doc for _, doc in self.store.scan(JOB_KIND) if doc["status"] in ACTIVE_STATUSES]
        for doc in sorted(left, key=lambda doc: doc["created"]):  # restarted jobs queue as they came
            key = doc["name"].lower()
            if doc["status"] == "InProgress" and retries_left(doc):
                self._restart(key)
            else:  # it was last seen running when its document last changed
                outcome = Outcome("Failed", "Failed", "Training job failed", INTERRUPTED)
                self._finish(key, outcome, ended_at=doc["modified"])

    def _restart(self, key: str) -> None:
        """Run an interrupted job again under its name, as SageMaker does for a RetryStrategy."""
        doc = self._doc(key)
        attempt = doc.get("attempt", 1) + 1
        total = doc["request"]["RetryStrategy"]["MaximumRetryAttempts"] + 1
        logger.warning(
            "restarting interrupted training job %s (attempt %d of %d)", doc["name"], attempt, total
        )
        self._update(
            key,
            attempt=attempt,
            training_start=None,
            training_end=None,
            failure_reason=None,
            model_artifacts=None,
            metrics={},
            transition=(
                "Restarting",
                f"Restarting the training job after an internal error (attempt {attempt} of {total})",
            ),
        )
        # A fresh instance: nothing the last attempt wrote is left by the time start() returns, not only
        # once this attempt's thread gets a slot and prepares its directory.
        shutil.rmtree(doc["base_dir"], ignore_errors=True)
        self._run(key)

    def stop(self) -> None:
        """Stop every running job's processes. Each is recorded as Failed with INTERRUPTED, except a job
        whose RetryStrategy has attempts left: it stays InProgress, and the next start restarts it."""
        with self._runs_lock:
            runs = list(self._runs.values())
        for run in runs:
            run.interrupted.set()
        for run in runs:
            run.thread.join(timeout=self.stop_grace_s + 5)
            if run.thread.is_alive():
                logger.error(
                    "training job %s did not stop in time; the next start marks it interrupted", run.key
                )

    def counts(self) -> dict[str, int]:
        with self._runs_lock:
            live = len(self._runs)
        return {"training_jobs": self.store.count(JOB_KIND), "training_jobs_live": live}

    # --- the API -----------------------------------------------------------------------------------

    def create(self, params: dict[str, Any]) -> str:
        """Validate a CreateTrainingJob request like SageMaker, store the job and start running it."""
        name = check_name(params["TrainingJobName"], "trainingJobName")
        request = self._checked_request(params)
        tags = check_tags(params.get("Tags", []))
        key = name.lower()
        arn = self.arns.make("training-job", name)
        created = now()
        doc = {
            "name": name,
            "arn": arn,
            "request": request,
            "status": "InProgress",
            "secondary": "Starting",
            "transitions": [
                {
                    "Status": "Starting",
                    "StartTime": created,
                    "StatusMessage": "Launching requested ML instances",
                }
            ],
            "created": created,
            "modified": created,
            "training_start": None,
            "training_end": None,
            "failure_reason": None,
            "model_artifacts": None,
            "metrics": {},
            "base_dir": str(self.jobs_dir / key),
        }
        with self.store.transaction():
            if not self.store.insert(JOB_KIND, key, doc):
                raise validation_error(
                    "Training job names must be unique within an AWS account and region, and a training "
                    f"job with this name already exists ({arn})"
                )
            self.tags.put(arn, tags)
        self._run(key)
        return arn

    def _run(self, key: str) -> None:
        run = JobRun(self, key)
        with self._runs_lock:
            self._runs[key] = run
        run.thread.start()

    def describe(self, name: str) -> dict[str, Any]:
        doc = self._doc(name.lower())
        described = echoed("DescribeTrainingJob", doc["request"])
        described.update(
            {
                "TrainingJobName": doc["name"],
                "TrainingJobArn": doc["arn"],
                "TrainingJobStatus": doc["status"],
                "SecondaryStatus": doc["secondary"],
                "FailureReason": doc["failure_reason"],
                "CreationTime": doc["created"],
                "LastModifiedTime": doc["modified"],
                "TrainingStartTime": doc["training_start"],
                "TrainingEndTime": doc["training_end"],
                "SecondaryStatusTransitions": doc["transitions"],
                "FinalMetricDataList": self._final_metrics(doc),
            }
        )
        if doc["model_artifacts"]:
            described["ModelArtifacts"] = {"S3ModelArtifacts": doc["model_artifacts"]}
        if doc["training_start"] is not None and doc["training_end"] is not None:
            seconds = int(doc["training_end"] - doc["training_start"])
            described["TrainingTimeInSeconds"] = seconds
            described["BillableTimeInSeconds"] = seconds
        return described

    def list(self, params: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        """ListTrainingJobs: filters, SortBy (default CreationTime), SortOrder (default Ascending), pages."""
        sort_by = check_choice(params.get("SortBy", "CreationTime"), LIST_SORT_KEYS, "sortBy")
        order = check_choice(params.get("SortOrder", "Ascending"), SORT_ORDERS, "sortOrder")
        max_results = check_max_results(params.get("MaxResults", 10))
        status = params.get("StatusEquals")
        if status is not None:
            check_choice(status, JOB_STATUSES, "statusEquals")
        contains = params.get("NameContains", "").lower()
        docs = [
            doc
            for _, doc in self.store.scan(JOB_KIND)
            if contains in doc["name"].lower()
            and (status is None or doc["status"] == status)
            and time_filter(params, doc["created"], "CreationTimeAfter", "CreationTimeBefore")
            and time_filter(params, doc["modified"], "LastModifiedTimeAfter", "LastModifiedTimeBefore")
        ]
        sort_keys: dict[str, Callable[[dict[str, Any]], tuple]] = {
            "Name": lambda doc: (doc["name"].lower(),),
            "CreationTime": lambda doc: (doc["created"], doc["name"].lower()),
            "Status": lambda doc: (doc["status"], doc["created"], doc["name"].lower()),
        }
        page, token = sort_and_page(
            docs,
            sort_keys[sort_by],
            descending=order == "Descending",
            token=params.get("NextToken"),
            max_results=max_results,
        )
        summaries = [
            {
                "TrainingJobName": doc["name"],
                "TrainingJobArn": doc["arn"],
                "CreationTime": doc["created"],
                "TrainingEndTime": doc["training_end"],
                "LastModifiedTime": doc["modified"],
                "TrainingJobStatus": doc["status"],
                "SecondaryStatus": doc["secondary"],
            }
            for doc in page
        ]
        return summaries, token

    def stop_job(self, name: str) -> None:
        """StopTrainingJob: InProgress becomes Stopping at once; the runner then ends the process tree."""
        key = name.lower()
        with self.store.transaction():
            doc = self._doc(key)
            if doc["status"] == "Stopping":
                return
            if doc["status"] != "InProgress":
                raise validation_error(
                    f"The request was rejected because the training job is in status {doc['status']}."
                )
            self._update(key, status="Stopping", transition=("Stopping", "Stopping the training job"))
        with self._runs_lock:
            run = self._runs.get(key)
        if run is not None:
            run.stop_requested.set()
        else:  # nothing runs it (cannot happen while localcloud is up); it is stopped already
            self._finish(key, Outcome("Stopped", "Stopped", "Training job stopped"))

    def arn_exists(self, resource_id: str) -> bool:
        return self.store.get(JOB_KIND, resource_id) is not None

    # --- state -------------------------------------------------------------------------------------

    def _doc(self, key: str) -> dict[str, Any]:
        doc = self.store.get(JOB_KIND, key)
        if doc is None:
            raise validation_error("Requested resource not found.")
        return doc

    def _update(
        self, key: str, *, transition: tuple[str, str] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Change a job's document atomically; a transition is (SecondaryStatus, StatusMessage).

        While a job is Stopping, only a final transition replaces the Stopping one.
        """
        with self.store.transaction():
            doc = self._doc(key)
            doc.update(fields)
            stamp = now()
            if transition is not None:
                secondary, message = transition
                if doc["status"] != "Stopping" or secondary in ("Stopping", *TERMINAL_SECONDARY):
                    previous = doc["transitions"][-1]
                    previous.setdefault("EndTime", stamp)
                    entry = {"Status": secondary, "StartTime": stamp, "StatusMessage": message}
                    if secondary in TERMINAL_SECONDARY:
                        entry["EndTime"] = stamp
                    doc["transitions"].append(entry)
                    doc["secondary"] = secondary
            doc["modified"] = stamp
            self.store.put(JOB_KIND, key, doc)
            return doc

    def _finish(self, key: str, outcome: Outcome, ended_at: float | None = None) -> None:
        with self.store.transaction():
            doc = self._doc(key)
            end = (ended_at or now()) if doc["training_start"] is not None else None
            self._update(
                key,
                status=outcome.status,
                failure_reason=outcome.failure_reason,
                training_end=end,
                transition=(outcome.secondary, outcome.message),
            )
        self.forget_run(key)

    def forget_run(self, key: str) -> None:
        with self._runs_lock:
            self._runs.pop(key, None)

    @staticmethod
    def _final_metrics(doc: dict[str, Any]) -> list[dict[str, Any]]:
        definitions = doc["request"].get("AlgorithmSpecification", {}).get("MetricDefinitions", [])
        found = doc["metrics"]
        return [
            {
                "MetricName": d["Name"],
                "Value": found[d["Name"]]["Value"],
                "Timestamp": found[d["Name"]]["Timestamp"],
            }
            for d in definitions
            if d["Name"] in found
        ]

    # --- slots -------------------------------------------------------------------------------------

    def _acquire_slot(self, run: JobRun) -> bool:
        """Wait, first come first served, until the job may train; False if it must end instead."""
        with self._slots:
            self._waiting.append(run.key)
            try:
                while not (self._waiting[0] == run.key and self._running < self.max_running):
                    if run.should_end():
                        return False
                    run.note_waiting(self.max_running)
                    self._slots.wait(0.2)
                self._running += 1
                return True
            finally:
                self._waiting.remove(run.key)
                self._slots.notify_all()

    def _release_slot(self) -> None:
        with self._slots:
            self._running -= 1
            self._slots.notify_all()

    # --- validation --------------------------------------------------------------------------------

    def _checked_request(self, params: dict[str, Any]) -> dict[str, Any]:
        """The request as stored (everything but name and tags), after SageMaker's checks."""
        if not ROLE_ARN_PATTERN.fullmatch(params["RoleArn"]):
            raise constraint_error(
                params["RoleArn"],
                "roleArn",
                f"satisfy regular expression pattern: ^{ROLE_ARN_PATTERN.pattern}",
            )
        algorithm = params.get("AlgorithmSpecification")
        if not algorithm:
            raise validation_error(
                "AlgorithmSpecification is required: localcloud runs script-mode jobs from a TrainingImage"
            )
        if algorithm.get("AlgorithmName"):
            raise validation_error(
                "localcloud runs training jobs from a TrainingImage (script mode); "
                f"AlgorithmName {algorithm['AlgorithmName']!r} (a SageMaker or Marketplace algorithm) is not supported"
            )
        if not algorithm.get("TrainingImage"):
            raise validation_error("AlgorithmSpecification.TrainingImage is required")
        for field in ("HyperParameters", "Environment"):
            not_strings = sorted(k for k, v in params.get(field, {}).items() if not isinstance(v, str))
            if not_strings:
                raise validation_error(f"{field} values must be strings; these are not: {not_strings}")
        _check_input_mode(algorithm["TrainingInputMode"], "algorithmSpecification.trainingInputMode")
        names = [definition["Name"] for definition in algorithm.get("MetricDefinitions", [])]
        if len(set(names)) != len(names):
            raise validation_error(f"MetricDefinitions names must be unique, got {names}")
        for definition in algorithm.get("MetricDefinitions", []):
            try:
                re.compile(definition["Regex"])
            except re.error as error:
                raise validation_error(
                    f"MetricDefinitions regex for {definition['Name']!r} is not a valid regular expression: {error}"
                ) from None

        resources = params.get("ResourceConfig") or {}
        if "InstanceType" not in resources or "InstanceCount" not in resources:
            raise validation_error("ResourceConfig must give InstanceType and InstanceCount")
        if resources["InstanceCount"] != 1:
            raise validation_error(
                f"localcloud runs single-instance training jobs; InstanceCount must be 1, got {resources['InstanceCount']}"
            )

        channel_names = []
        for index, channel in enumerate(params.get("InputDataConfig", []), start=1):
            field = f"inputDataConfig.{index}.member"
            channel_names.append(channel["ChannelName"])
            # The name becomes input/data/<name>/, so "." and ".." are refused too.
            if not re.fullmatch(r"[A-Za-z0-9.\-_]{1,64}", channel["ChannelName"]) or channel[
                "ChannelName"
            ] in (".", ".."):
                raise constraint_error(
                    channel["ChannelName"],
                    f"{field}.channelName",
                    "match [A-Za-z0-9.-_]{1,64} and not be . or ..",
                )
            source = channel["DataSource"].get("S3DataSource")
            if source is None:
                raise validation_error(
                    f"channel {channel['ChannelName']!r}: localcloud reads channels from S3 only (S3DataSource)"
                )
            check_choice(
                source["S3DataType"],
                ("S3Prefix", "ManifestFile"),
                f"{field}.dataSource.s3DataSource.s3DataType",
            )
            parse_s3_uri(source["S3Uri"], f"{field}.dataSource.s3DataSource.s3Uri")
            if "InputMode" in channel:
                _check_input_mode(channel["InputMode"], f"{field}.inputMode")
        if len(set(channel_names)) != len(channel_names):
            raise validation_error(f"InputDataConfig channel names must be unique, got {channel_names}")

        parse_s3_uri(params["OutputDataConfig"]["S3OutputPath"], "outputDataConfig.s3OutputPath")
        if "CheckpointConfig" in params:
            parse_s3_uri(params["CheckpointConfig"]["S3Uri"], "checkpointConfig.s3Uri")
            local = PurePosixPath(params["CheckpointConfig"].get("LocalPath", "/opt/ml/checkpoints"))
            if not local.is_absolute() or ".." in local.parts:
                raise constraint_error(
                    str(local), "checkpointConfig.localPath", "be an absolute path without '..'"
                )

        stopping = dict(params.get("StoppingCondition") or {})
        stopping.setdefault("MaxRuntimeInSeconds", DEFAULT_MAX_RUNTIME_S)
        if stopping["MaxRuntimeInSeconds"] < 1:
            raise constraint_error(
                stopping["MaxRuntimeInSeconds"],
                "stoppingCondition.maxRuntimeInSeconds",
                "have value greater than or equal to 1",
            )
        if params.get("EnableManagedSpotTraining"):
            if stopping.get("MaxWaitTimeInSeconds", 0) < stopping["MaxRuntimeInSeconds"]:
                raise validation_error(
                    "Invalid MaxWaitTimeInSeconds. It must be present and be greater than or equal to "
                    "MaxRuntimeInSeconds"
                )
        elif "MaxWaitTimeInSeconds" in stopping:
            raise validation_error(
                "MaxWaitTimeInSeconds can be set only when EnableManagedSpotTraining is true"
            )

        if "RetryStrategy" in params:
            attempts = params["RetryStrategy"]["MaximumRetryAttempts"]
            if not 1 <= attempts <= MAX_RETRY_ATTEMPTS:
                raise constraint_error(
                    attempts,
                    "retryStrategy.maximumRetryAttempts",
                    "have value greater than or equal to 1"
                    if attempts < 1
                    else f"have value less than or equal to {MAX_RETRY_ATTEMPTS}",
                )

        request = {key: value for key, value in params.items() if key not in ("TrainingJobName", "Tags")}
        request["StoppingCondition"] = stopping
        request.setdefault("EnableManagedSpotTraining", False)
        request.setdefault("EnableNetworkIsolation", False)
        request.setdefault("EnableInterContainerTrafficEncryption", False)
        return request


def retries_left(doc: dict[str, Any]) -> bool:
    """Whether the job's RetryStrategy allows another attempt after this one (the first is attempt 1)."""
    retry = doc["request"].get("RetryStrategy") or {}
    return doc.get("attempt", 1) <= retry.get("MaximumRetryAttempts", 0)


def _check_input_mode(mode: str, field: str) -> None:
    check_choice(mode, ("Pipe", "File", "FastFile"), field)
    if mode == "Pipe":
        raise validation_error(f"{field}: localcloud does not support Pipe input mode; use File or FastFile")


class JobRun:
    """Runs one training job in its own thread, from waiting for a slot to the final status."""

    def __init__(self, jobs: TrainingJobs, key: str) -> None:
        self.jobs = jobs
        self.key = key
        self.stop_requested = threading.Event()  # StopTrainingJob
        self.interrupted = threading.Event()  # localcloud is shutting down
        self.thread = threading.Thread(target=self.run, name=f"training-job-{key}", daemon=True)
        self._doc = jobs._doc(key)
        self._request: dict[str, Any] = self._doc["request"]
        self._runtime_deadline: float | None = None
        self._noted_waiting = False

    # --- control -------------------------------------------------------------------------------------

    def should_end(self) -> bool:
        return self.why_end() is not None

    def why_end(self) -> Outcome | None:
        """Why the job must end now (localcloud stopping, StopTrainingJob, a time limit), if it must."""
        if self.interrupted.is_set():
            return Outcome("Failed", "Failed", "Training job failed", INTERRUPTED)
        if self.stop_requested.is_set():
            return Outcome("Stopped", "Stopped", "Training job stopped", upload_model=True)
        stopping = self._request["StoppingCondition"]
        clock = now()
        if self._runtime_deadline is not None and clock >= self._runtime_deadline:
            limit = stopping["MaxRuntimeInSeconds"]
            return Outcome(
                "Stopped",
                "MaxRuntimeExceeded",
                "Training job stopped: it ran longer than MaxRuntimeInSeconds",
                f"MaxRuntimeExceeded: Training job ran longer than its StoppingCondition.MaxRuntimeInSeconds "
                f"of {limit} s and was stopped",
                upload_model=True,
            )
        max_wait = stopping.get("MaxWaitTimeInSeconds")
        if max_wait is not None and clock >= self._doc["created"] + max_wait:
            return Outcome(
                "Stopped",
                "MaxWaitTimeExceeded",
                "Training job stopped: waiting and training took longer than MaxWaitTimeInSeconds",
                f"MaxWaitTimeExceeded: Training job exceeded its StoppingCondition.MaxWaitTimeInSeconds of {max_wait} s",
                upload_model=True,
            )
        return None

    def note_waiting(self, max_running: int) -> None:
        if not self._noted_waiting:
            self._noted_waiting = True
            self.jobs._update(
                self.key,
                transition=(
                    "Starting",
                    f"Waiting for a free training slot: this localcloud trains at most {max_running} job(s) at once",
                ),
            )

    # --- the run -------------------------------------------------------------------------------------

    def run(self) -> None:
        holds_slot = False
        try:
            holds_slot = self.jobs._acquire_slot(self)
            outcome = self._execute() if holds_slot else self.why_end()
        except JobEnded as ended:
            outcome = ended.outcome
        except Exception as error:  # localcloud's own fault: the job must still end, never hang InProgress
            logger.exception("training job %s failed inside localcloud", self.key)
            outcome = Outcome(
                "Failed",
                "Failed",
                "Training job failed",
                f"InternalServerError: localcloud could not run the job: {error!r}",
            )
        finally:
            if holds_slot:
                self.jobs._release_slot()
            # The channels are copies of S3 objects; the job directory keeps only what the job made.
            shutil.rmtree(Path(self._doc["base_dir"]) / "input" / "data", ignore_errors=True)
        outcome = outcome or Outcome("Failed", "Failed", "Training job failed", INTERRUPTED)
        try:
            if outcome.failure_reason == INTERRUPTED and retries_left(self.jobs._doc(self.key)):
                self.jobs.forget_run(self.key)  # still InProgress: the next start restarts it
            else:
                self.jobs._finish(self.key, outcome)
        except Exception:
            logger.exception("could not record the end of training job %s", self.key)

    def _execute(self) -> Outcome:
        self._end_if_asked()
        start = now()
        self._runtime_deadline = start + self._request["StoppingCondition"]["MaxRuntimeInSeconds"]
        self.jobs._update(
            self.key, training_start=start, transition=("Downloading", "Downloading input data")
        )
        job = self._prepare()
        ended = self._train(job, log_stream=f"{self._doc['name']}/{HOST}-{int(start)}")
        self._sync_checkpoints_out(job)
        if ended is not None:
            if ended.upload_model and any(job.model_dir.iterdir()):
                self._upload_model(job)
            return ended
        succeeded, reason = collect_result(job)
        if not succeeded:
            if reason and "InstallRequirementsError" in reason:
                # The toolkit's own reason names no package; say what differs from SageMaker.
                reason = reason[: FAILURE_REASON_LIMIT - len(PIP_HINT)] + PIP_HINT
            return Outcome("Failed", "Failed", "Training job failed", reason)
        self.jobs._update(self.key, transition=("Uploading", "Uploading generated training model"))
        self._upload_model(job)
        return Outcome("Completed", "Completed", "Training job completed")

    def _end_if_asked(self) -> None:
        outcome = self.why_end()
        if outcome is not None:
            raise JobEnded(outcome)

    # --- downloading ---------------------------------------------------------------------------------

    def _prepare(self) -> JobPaths:
        request = self._request
        base = Path(self._doc["base_dir"])
        shutil.rmtree(base, ignore_errors=True)
        job = prepare_job_dir(
            base,
            job_name=self._doc["name"],
            hyperparameters=request.get("HyperParameters", {}),
            input_data_config=request.get("InputDataConfig", []),
            instance_type=request["ResourceConfig"]["InstanceType"],
        )
        output_bucket, _ = parse_s3_uri(request["OutputDataConfig"]["S3OutputPath"], "S3OutputPath")
        if not self._bucket_exists(output_bucket):
            raise client_error(
                f'The S3 bucket "{output_bucket}" of OutputDataConfig.S3OutputPath does not exist; '
                "create it before starting the job"
            )
        for channel in request.get("InputDataConfig", []):
            self._download_channel(channel, job.channel_dir(channel["ChannelName"]))
        if "CheckpointConfig" in request:
            bucket, prefix = parse_s3_uri(request["CheckpointConfig"]["S3Uri"], "CheckpointConfig.S3Uri")
            if self._bucket_exists(bucket):
                for key, relative in self._objects_under(bucket, prefix):
                    self._copy_object(bucket, key, self._checkpoint_dir(job), relative)
        return job

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            self.jobs.s3.bucket(bucket)
        except ServiceError:
            return False
        return True

    def _download_channel(self, channel: dict[str, Any], destination: Path) -> None:
        source = channel["DataSource"]["S3DataSource"]
        uri = source["S3Uri"]
        bucket, prefix = parse_s3_uri(uri, "S3Uri")
        if source["S3DataType"] == "ManifestFile":
            objects = self._manifest_objects(uri, bucket, prefix)
        else:
            objects = [(bucket, key, relative) for key, relative in self._objects_under(bucket, prefix)]
        if not objects:
            region = self.jobs.config.region
            raise client_error(
                f'No S3 objects found under S3 URL "{uri}" given in input data source. Please ensure that the '
                f"bucket exists in the selected region ({region}), that objects exist under that S3 prefix, and "
                f'that the role "{self._request["RoleArn"]}" has "s3:ListBucket" permissions on bucket "{bucket}".'
            )
        for object_bucket, key, relative in objects:
            self._end_if_asked()
            self._copy_object(object_bucket, key, destination, relative)

    def _objects_under(self, bucket: str, prefix: str) -> list[tuple[str, str]]:
        """(key, path in the channel) of an S3Prefix, as SageMaker lays it out.

        A prefix that names an object exactly is that one file; otherwise every key under it, at its
        path after the prefix. "Folder" placeholder keys (ending in /) are skipped.
        """
        if not self._bucket_exists(bucket):
            return []
        if prefix and not prefix.endswith("/"):
            try:
                self.jobs.s3.head_object(bucket, prefix)
                return [(prefix, PurePosixPath(prefix).name)]
            except ServiceError:
                pass
        return [
            (key, key[len(prefix) :].lstrip("/") or PurePosixPath(key).name)
            for key in self.jobs.s3.list_keys(bucket, prefix)
            if not key.endswith("/")
        ]

    def _manifest_objects(self, uri: str, bucket: str, key: str) -> list[tuple[str, str, str]]:
        """(bucket, key, path in the channel) of every entry of a ManifestFile:
        ``[{"prefix": "s3://bucket/prefix/"}, "relative/key", ...]``."""
        try:
            manifest = json.loads(self.jobs.s3.get_bytes(bucket, key))
        except ServiceError:
            raise client_error(
                f'The manifest file "{uri}" given in input data source does not exist'
            ) from None
        except ValueError as error:
            raise client_error(f'The manifest file "{uri}" is not valid JSON: {error}') from None
        if (
            not isinstance(manifest, list)
            or not manifest
            or not isinstance(manifest[0], dict)
            or not isinstance(manifest[0].get("prefix"), str)
            or not all(isinstance(entry, str) for entry in manifest[1:])
        ):
            raise client_error(
                f'The manifest file "{uri}" must be a JSON list: [{{"prefix": "s3://bucket/prefix/"}}, "key", ...]'
            )
        prefix_bucket, prefix = parse_s3_uri(manifest[0]["prefix"], "manifest prefix")
        objects = []
        for relative in manifest[1:]:
            object_key = prefix + relative
            try:
                self.jobs.s3.head_object(prefix_bucket, object_key)
            except ServiceError:
                raise client_error(
                    f'Data download failed: "s3://{prefix_bucket}/{object_key}", listed in the manifest file '
                    f'"{uri}", does not exist'
                ) from None
            objects.append((prefix_bucket, object_key, relative))
        return objects

    def _copy_object(self, bucket: str, key: str, destination: Path, relative: str) -> None:
        try:
            target = safe_join(destination, relative)
        except UnsafePath as error:
            raise client_error(
                f'S3 object "s3://{bucket}/{key}" cannot be placed in the channel: {error}'
            ) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        _, source = self.jobs.s3.open_object(bucket, key)
        with source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK_BYTES)

    # --- training ------------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str | None]:
        endpoint, region = self.jobs.endpoint_url, self.jobs.config.region
        env: dict[str, str | None] = {
            name: None
            for name in os.environ
            if name.startswith("AWS_ENDPOINT_URL_") or name in HOST_AWS_SETTINGS
        }
        env.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "S3_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "localcloud",
                "AWS_SECRET_ACCESS_KEY": "localcloud",
                "AWS_REGION": region,
                "AWS_DEFAULT_REGION": region,
                "TRAINING_JOB_ARN": self._doc["arn"],
                "PIP_NO_INDEX": "1",
            }
        )
        for name, value in self._request.get("Environment", {}).items():
            if name not in PROTECTED_ENVIRONMENT:
                env[name] = value
        return env

    def _train(self, job: JobPaths, log_stream: str) -> Outcome | None:
        """Run the toolkit, streaming its output to the log and the metrics; the reason it was cut short."""
        self._end_if_asked()
        self.jobs._update(
            self.key, transition=("Training", "Training image download completed. Training in progress.")
        )
        metrics = MetricScanner(self._request["AlgorithmSpecification"].get("MetricDefinitions", []))
        # This thread must outlive the toolkit's process group: the kernel kills the group when the
        # thread that started it ends (localcloud.processes), so it ends the group before it returns.
        proc = start_training(job, env=self._environment())
        reader = stopper = group = None
        completed = False
        try:
            group = self.jobs.processes.add(proc, f"training job {self._doc['name']}")
            lines: queue.Queue[str | None] = queue.Queue()
            reader = threading.Thread(
                target=_pump, args=(proc, lines), name=f"{self.key}-output", daemon=True
            )
            reader.start()
            ended: Outcome | None = None
            finished = False
            while not finished:
                batch, finished = _next_batch(lines)
                if batch:
                    stamp = now()
                    self.jobs.logs.append(LOG_GROUP, log_stream, batch, timestamp_ms=int(stamp * 1000))
                    if metrics.scan(batch, stamp):
                        self.jobs._update(self.key, metrics=metrics.found)
                if ended is None and not finished:
                    ended = self.why_end()
                    if ended is not None:
                        grace = (
                            min(self.jobs.stop_grace_s, 5.0)
                            if self.interrupted.is_set()
                            else self.jobs.stop_grace_s
                        )
                        # Blocks for up to the grace period; the reader keeps collecting the last lines.
                        stopper = threading.Thread(target=stop_training, args=(proc, grace), daemon=True)
                        stopper.start()
                    elif leader_exited(proc):
                        # The toolkit is done; what the script left running would hold the log open.
                        signal_group(proc, signal.SIGKILL)
            completed = True
            return ended
        finally:
            if stopper is not None:
                stopper.join()
            elif not completed:  # this thread failed (a full disk, say): the job must not run on
                signal_group(proc, signal.SIGKILL)
            end_group(proc)
            if reader is not None:
                reader.join(timeout=5)
            try:
                self.jobs.processes.remove(group)
            except Exception:  # the next start finds the group gone
                logger.exception("could not forget the process group of training job %s", self.key)

    def _checkpoint_dir(self, job: JobPaths) -> Path:
        # LocalPath (default /opt/ml/checkpoints) lives under SAGEMAKER_BASE_DIR, localcloud's /opt/ml.
        local = PurePosixPath(
            self._request.get("CheckpointConfig", {}).get("LocalPath") or "/opt/ml/checkpoints"
        )
        relative = (
            local.relative_to("/opt/ml") if local.is_relative_to("/opt/ml") else PurePosixPath("checkpoints")
        )
        directory = safe_join(job.base, str(relative))
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def _sync_checkpoints_out(self, job: JobPaths) -> None:
        if "CheckpointConfig" not in self._request or self.interrupted.is_set():
            return
        bucket, prefix = parse_s3_uri(self._request["CheckpointConfig"]["S3Uri"], "CheckpointConfig.S3Uri")
        if not self._bucket_exists(bucket):
            return
        directory = self._checkpoint_dir(job)
        base = prefix.rstrip("/") + "/" if prefix else ""
        for path in sorted(directory.rglob("*")):
            if path.is_file() and not path.is_symlink():
                self.jobs.s3.put_file(bucket, base + path.relative_to(directory).as_posix(), path)

    # --- uploading -----------------------------------------------------------------------------------

    def _upload_model(self, job: JobPaths) -> None:
        bucket, prefix = parse_s3_uri(self._request["OutputDataConfig"]["S3OutputPath"], "S3OutputPath")
        key = "/".join(
            part for part in (prefix.rstrip("/"), self._doc["name"], "output", "model.tar.gz") if part
        )
        archive = pack_model(job)
        try:
            self.jobs.s3.put_file(bucket, key, archive, content_type="application/x-tar")
        except ServiceError as error:
            raise client_error(
                f"Uploading the model to s3://{bucket}/{key} failed: {error.message}"
            ) from None
        finally:
            archive.unlink(missing_ok=True)
        self.jobs._update(self.key, model_artifacts=f"s3://{bucket}/{key}")


class MetricScanner:
    """MetricDefinitions applied to log lines: the last value of each metric, with when it was logged."""

    def __init__(self, definitions: list[dict[str, str]]) -> None:
        self.patterns = [(d["Name"], re.compile(d["Regex"])) for d in definitions]
        self.found: dict[str, dict[str, float]] = {}

    def scan(self, lines: list[str], timestamp: float) -> bool:
        """Record every match in `lines`; True if any metric changed."""
        changed = False
        for line in lines:
            for name, pattern in self.patterns:
                match = pattern.search(line)
                if match is None:
                    continue
                try:
                    value = float(match.group(1) if pattern.groups else match.group(0))
                except ValueError:
                    continue
                self.found[name] = {"Value": value, "Timestamp": timestamp}
                changed = True
        return changed


def _pump(proc: subprocess.Popen, lines: queue.Queue[str | None]) -> None:
    try:
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
    finally:
        lines.put(None)


def _next_batch(lines: queue.Queue[str | None]) -> tuple[list[str], bool]:
    """The lines that arrived within LOG_FLUSH_S (up to LOG_BATCH_LINES), and whether output ended."""
    batch: list[str] = []
    try:
        line = lines.get(timeout=LOG_FLUSH_S)
        while True:
            if line is None:
                return batch, True
            batch.append(line)
            if len(batch) >= LOG_BATCH_LINES:
                return batch, False
            line = lines.get_nowait()
    except queue.Empty:
        return batch, False
