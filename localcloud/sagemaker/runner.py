"""Running one SageMaker training job on this machine with the official training toolkit.

JobRun, one thread per job (started by jobs.TrainingJobs), takes a job from its slot to its final status:
Downloading (a fresh job directory from prepare_job_dir, channels and checkpoints from localcloud's S3 by
transfer.py), Training (start_training runs ``sagemaker-training``'s ``train`` entry point, which fetches
``sagemaker_submit_directory`` itself; output goes line by line to CloudWatch Logs,
``/aws/sagemaker/TrainingJobs`` stream ``<job>/algo-1-<epoch>``, and through the MetricDefinitions
regexes into FinalMetricDataList), Uploading (pack_model: ``<S3OutputPath>/<job>/output/model.tar.gz``;
collect_result turns output/failure into FailureReason).

The job directory is laid out as SageMaker lays out ``/opt/ml`` in a training container, and is the
toolkit's ``SAGEMAKER_BASE_DIR``::

    <base>/input/config/hyperparameters.json   the job's HyperParameters (all strings, as in the API)
    <base>/input/config/inputdataconfig.json   one entry per channel
    <base>/input/config/resourceconfig.json    a single host, algo-1
    <base>/input/data/<channel>/               the channel's files (File mode)
    <base>/code/                               the toolkit unpacks sagemaker_submit_directory here
    <base>/model/                              the script's SM_MODEL_DIR, packed into model.tar.gz
    <base>/output/                             success or failure; output/data is SM_OUTPUT_DATA_DIR

``SM_STUDIO_LOCAL_MODE`` makes the toolkit skip its wait for the ``algo-1`` host name, which only
resolves inside SageMaker's container network. The functions from JobPaths down need no localcloud
(the benchmarks and tests/model_code/test_train.py run the toolkit with them directly).

StopTrainingJob, MaxRuntimeInSeconds and (spot) MaxWaitTimeInSeconds stop the whole process tree:
SIGTERM, then SIGKILL after a grace period, as SageMaker does; what the model dir holds by then is
still uploaded. The toolkit leads a process group of its own, started from the runner thread, which
lives until that group has ended; the group dies with localcloud, even SIGKILLed (localcloud.processes).

The host's Python environment runs the job: TrainingImage is recorded, never pulled. The job sees
AWS_ENDPOINT_URL/S3_ENDPOINT_URL pointing at localcloud and dummy credentials (the host's AWS profile
and session token are removed), and PIP_NO_INDEX=1, so the toolkit's ``pip install -r
requirements.txt`` is a no-op when the environment has the pins and fails fast, without the network,
when it does not. A GPU is used when the host has one (the toolkit sets SM_NUM_GPUS).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localcloud.processes import end_group, leader_exited, live_members, python_command, signal_group
from localcloud.sagemaker.common import JobEnded, Outcome, now
from localcloud.sagemaker.transfer import JobTransfer

if TYPE_CHECKING:
    from localcloud.sagemaker.jobs import TrainingJobs

logger = logging.getLogger("localcloud")

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
HOST = "algo-1"
INTERRUPTED = "interrupted: localcloud stopped while the job was running"
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
# `python -m sagemaker_training.cli.train`, after localcloud.processes' bootstrap.
_TOOLKIT_TRAIN = (
    "import runpy; runpy.run_module('sagemaker_training.cli.train', run_name='__main__', alter_sys=True)"
)
# DescribeTrainingJob returns at most this much of output/failure as FailureReason.
FAILURE_REASON_LIMIT = 1024


def retries_left(doc: dict[str, Any]) -> bool:
    """Whether the job's RetryStrategy allows another attempt after this one (the first is attempt 1)."""
    retry = doc["request"].get("RetryStrategy") or {}
    return doc.get("attempt", 1) <= retry.get("MaximumRetryAttempts", 0)


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
        self.transfer = JobTransfer(jobs.s3, jobs.config.region, self._doc["name"], self._request)

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
        if not self.interrupted.is_set():
            self.transfer.sync_checkpoints_out(job)
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
        self.transfer.download(job, self._end_if_asked)
        return job

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

    # --- uploading -----------------------------------------------------------------------------------

    def _upload_model(self, job: JobPaths) -> None:
        archive = pack_model(job)
        try:
            uri = self.transfer.upload_model(archive)
        finally:
            archive.unlink(missing_ok=True)
        self.jobs._update(self.key, model_artifacts=uri)


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


# --- the job directory and the toolkit (no localcloud needed) -------------------------------------


@dataclass(frozen=True)
class JobPaths:
    """Where one job's files live; ``base`` is its SAGEMAKER_BASE_DIR."""

    base: Path
    job_name: str

    @property
    def config_dir(self) -> Path:
        return self.base / "input" / "config"

    @property
    def data_dir(self) -> Path:
        return self.base / "input" / "data"

    @property
    def code_dir(self) -> Path:
        return self.base / "code"

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def model_archive(self) -> Path:
        # Outside model/, so packing never includes the archive itself.
        return self.base / "model.tar.gz"

    def channel_dir(self, channel: str) -> Path:
        return self.data_dir / channel


def channel_file_config(api_channel: Mapping) -> dict:
    """The inputdataconfig.json entry for one channel of CreateTrainingJob's InputDataConfig."""
    s3_source = api_channel.get("DataSource", {}).get("S3DataSource", {})
    config = {
        "TrainingInputMode": api_channel.get("InputMode", "File"),
        "S3DistributionType": s3_source.get("S3DataDistributionType", "FullyReplicated"),
        "RecordWrapperType": api_channel.get("RecordWrapperType", "None"),
    }
    if "ContentType" in api_channel:
        config["ContentType"] = api_channel["ContentType"]
    return config


def prepare_job_dir(
    base_dir: str | os.PathLike,
    *,
    job_name: str,
    hyperparameters: Mapping[str, str],
    channels: Mapping[str, str | os.PathLike] | None = None,
    input_data_config: Sequence[Mapping] | None = None,
    entry_point: str | None = None,
    submit_dir: str | None = None,
    instance_type: str = "ml.m5.xlarge",
) -> JobPaths:
    """Lay out a fresh job directory; returns its paths.

    :param base_dir: the job's directory; it must not exist yet or be empty.
    :param job_name: the TrainingJobName (the script sees it in SM_TRAINING_ENV).
    :param hyperparameters: CreateTrainingJob's HyperParameters: names to *string* values, which
        the toolkit JSON-decodes (so ``"3"`` is 3 and ``'"train.py"'`` is "train.py").
    :param channels: channel name to a local directory whose files are copied into the channel.
        A caller that downloads from S3 itself writes into ``JobPaths.channel_dir(name)`` instead.
    :param input_data_config: CreateTrainingJob's InputDataConfig (a list of channels); by
        default, one File-mode channel per entry of ``channels``.
    :param entry_point: sets the ``sagemaker_program`` hyperparameter (e.g. "train.py").
    :param submit_dir: sets ``sagemaker_submit_directory``: a local directory or tarball, or an
        ``s3://`` URI of sourcedir.tar.gz (the toolkit reads it through boto3 with S3_ENDPOINT_URL).
    :param instance_type: recorded in resourceconfig.json.
    """
    channels = dict(channels or {})
    hyperparameters = dict(hyperparameters)
    not_strings = sorted(name for name, value in hyperparameters.items() if not isinstance(value, str))
    if not_strings:
        raise TypeError(f"hyperparameter values must be strings, as in CreateTrainingJob; not: {not_strings}")
    if entry_point is not None:
        hyperparameters["sagemaker_program"] = json.dumps(entry_point)
    if submit_dir is not None:
        hyperparameters["sagemaker_submit_directory"] = json.dumps(str(submit_dir))
    if input_data_config is None:
        input_data_config = [{"ChannelName": name} for name in channels]
    channel_configs = {channel["ChannelName"]: channel_file_config(channel) for channel in input_data_config}
    unconfigured = sorted(set(channels) - set(channel_configs))
    if unconfigured:
        raise ValueError(f"channels {unconfigured} are not in input_data_config")

    job = JobPaths(Path(base_dir).resolve(), job_name)
    if job.base.exists() and any(job.base.iterdir()):
        raise FileExistsError(f"job directory {job.base} is not empty; each job needs a fresh one")
    # The toolkit expects these to exist before it starts, as SageMaker creates them; without
    # output/ a failing script would not even leave output/failure behind.
    for directory in (job.config_dir, job.code_dir, job.model_dir, job.output_data_dir):
        directory.mkdir(parents=True, exist_ok=True)
    for name in channel_configs:
        if name in channels:
            shutil.copytree(channels[name], job.channel_dir(name))
        else:
            job.channel_dir(name).mkdir(parents=True, exist_ok=True)

    _write_json(job.config_dir / "hyperparameters.json", hyperparameters)
    _write_json(job.config_dir / "inputdataconfig.json", channel_configs)
    _write_json(
        job.config_dir / "resourceconfig.json",
        {
            "current_host": HOST,
            "hosts": [HOST],
            "current_instance_type": instance_type,
            "current_group_name": "homogeneousCluster",
            "instance_groups": [
                {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": [HOST]}
            ],
            "network_interface_name": "eth0",
        },
    )
    return job


def start_training(job: JobPaths, *, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start the toolkit's ``train`` entry point for a prepared job; returns at once.

    The process's stdout carries the job's log (the toolkit's and the script's, stderr merged in)
    as text lines, ready to stream to CloudWatch Logs. It leads its own process group, so
    :func:`stop_training` stops the script with it, and the group is SIGKILLed when the thread that
    called this ends (keep it alive until the job's process has exited) or its process dies.

    :param env: extra environment on top of this process's, e.g. S3_ENDPOINT_URL and AWS
        credentials for an ``s3://`` submit directory, or OMP_NUM_THREADS. A None value removes
        the variable (e.g. the host's AWS_PROFILE, which must not reach a local job).
    """
    job_env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(job.base),
        "SM_STUDIO_LOCAL_MODE": "true",
        "TRAINING_JOB_NAME": job.job_name,
        "PYTHONUNBUFFERED": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        **(env or {}),
    }
    job_env = {name: value for name, value in job_env.items() if value is not None}
    return subprocess.Popen(
        python_command(_TOOLKIT_TRAIN),
        cwd=job.base,
        env=job_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )


def stop_training(proc: subprocess.Popen, grace_s: float = 10.0) -> int:
    """Stop a job's whole process tree as SageMaker does: SIGTERM, then SIGKILL after ``grace_s``.

    Returns the toolkit's exit status.
    """
    signal_group(proc, signal.SIGTERM)
    # The script gets SIGTERM too and may need its grace period after the toolkit has gone.
    deadline = time.monotonic() + grace_s
    while live_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_group(proc, signal.SIGKILL)
    return proc.wait()


def collect_result(job: JobPaths) -> tuple[bool, str | None]:
    """(succeeded, FailureReason) from the files the toolkit leaves in output/."""
    if (job.output_dir / "success").exists():
        return True, None
    failure = job.output_dir / "failure"
    if failure.exists():
        message = (
            failure.read_text(errors="replace").strip() or "the training script failed without a message"
        )
    else:
        message = "training stopped without writing output/success or output/failure; see the job log"
    # SageMaker labels failures that come from the training code as AlgorithmError.
    return False, f"AlgorithmError: {message}"[:FAILURE_REASON_LIMIT]


def pack_model(job: JobPaths) -> Path:
    """Pack the model directory into model.tar.gz, its files at the root of the archive as in SageMaker.

    Entries are sorted and carry no timestamps, owners or paths, so the same model gives the same bytes.
    """
    with (
        open(job.model_archive, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as archive,
    ):
        for path in sorted(job.model_dir.rglob("*")):
            info = archive.gettarinfo(str(path), arcname=str(path.relative_to(job.model_dir)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if info.isfile():
                with open(path, "rb") as content:
                    archive.addfile(info, content)
            elif info.isdir():
                archive.addfile(info)
    return job.model_archive


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
