"""Run a SageMaker training job on this machine with the official training toolkit.

This is the HTTP-free half of localcloud's CreateTrainingJob. It lays out a job directory the way
SageMaker lays out ``/opt/ml`` in a training container, then runs the toolkit's ``train`` entry
point (``sagemaker-training``, the code inside SageMaker's framework images) with
``SAGEMAKER_BASE_DIR`` pointing at it::

    <base>/input/config/hyperparameters.json   the job's HyperParameters (all strings, as in the API)
    <base>/input/config/inputdataconfig.json   one entry per channel
    <base>/input/config/resourceconfig.json    a single host, algo-1
    <base>/input/data/<channel>/               the channel's files (File mode)
    <base>/code/                               the toolkit unpacks sagemaker_submit_directory here
    <base>/model/                              the script's SM_MODEL_DIR, packed into model.tar.gz
    <base>/output/                             success or failure; output/data is SM_OUTPUT_DATA_DIR

The host's Python environment runs the job. ``SM_STUDIO_LOCAL_MODE`` makes the toolkit skip its
wait for the ``algo-1`` host name, which only resolves inside SageMaker's container network.

The toolkit leads a process group of its own and dies with the process that started it, taking the
script and whatever the script started with it (localcloud.processes), even if that process is
SIGKILLed; StopTrainingJob's SIGTERM reaches the whole group as before.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from localcloud.processes import live_members, python_command, signal_group

HOST = "algo-1"
# `python -m sagemaker_training.cli.train`, after localcloud.processes' bootstrap.
_TOOLKIT_TRAIN = (
    "import runpy; runpy.run_module('sagemaker_training.cli.train', run_name='__main__', alter_sys=True)"
)
# DescribeTrainingJob returns at most this much of output/failure as FailureReason.
FAILURE_REASON_LIMIT = 1024


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
