"""SageMaker training jobs, the API side: each job's stored state and its status machine.

CreateTrainingJob checks the request as SageMaker does, stores the job (InProgress/Starting) and starts
one runner thread for it (runner.JobRun), which moves it through Downloading, Training and Uploading to
Completed, Failed or Stopped. Every state change is written to the store at once, with SageMaker's
SecondaryStatusTransitions. At most `max_running` jobs train at once; the others wait in Starting,
first come first served.

StopTrainingJob makes a job Stopping at once; its runner then ends the process tree. A job that was
running when localcloud stopped (or died) is, on the next start, Failed with INTERRUPTED as after a
host failure, unless its RetryStrategy has attempts left: SageMaker retries a job that failed for an
internal reason, and so the job restarts in place under the same name ("Restarting ... (attempt 2 of
3)" in its SecondaryStatusTransitions), with a fresh job directory and its checkpoints restored. A job
that failed for its own reasons (AlgorithmError, ClientError) is never retried.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from collections import deque
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from localcloud.processes import ProcessGroups
from localcloud.sagemaker.common import (
    ROLE_ARN_PATTERN,
    SORT_ORDERS,
    Arns,
    Outcome,
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
from localcloud.sagemaker.runner import INTERRUPTED, JobRun, retries_left

if TYPE_CHECKING:
    from localcloud.config import Config
    from localcloud.logs import LogsBackend
    from localcloud.s3 import S3Backend
    from localcloud.store import Store

logger = logging.getLogger("localcloud")

JOB_KIND = "sagemaker/training-job"  # key: the job name in lower case (names are unique regardless of case)
MAX_RETRY_ATTEMPTS = 30  # RetryStrategy.MaximumRetryAttempts: 1..30, as on SageMaker
DEFAULT_MAX_RUNTIME_S = 86_400  # SageMaker's default when StoppingCondition is left out
ACTIVE_STATUSES = ("InProgress", "Stopping")
JOB_STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped", "Deleting")
LIST_SORT_KEYS = ("Name", "CreationTime", "Status")
TERMINAL_SECONDARY = ("Completed", "Failed", "Stopped", "MaxRuntimeExceeded", "MaxWaitTimeExceeded")


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


def _check_input_mode(mode: str, field: str) -> None:
    check_choice(mode, ("Pipe", "File", "FastFile"), field)
    if mode == "Pipe":
        raise validation_error(f"{field}: localcloud does not support Pipe input mode; use File or FastFile")
