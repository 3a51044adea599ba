"""The train step: the SageMaker training job's name, its request, its source code, its operator.

- :func:`training_job_request` is the run's CreateTrainingJob request, from the run's Params
  (:func:`hyperparameters`), its snapshot and its uploaded source.
- :func:`training_job_name` derives the job name from the DAG run, so a retried or cleared task
  finds the job it started instead of starting another.
- :func:`build_training_job_config` is the whole CreateTrainingJob request, as a plain function.
- :func:`pack_source_dir` / :func:`upload_source_dir` turn ``model_code/`` into the script-mode
  ``sourcedir.tar.gz``, byte-for-byte reproducible and uploaded once per content.
- :class:`ResumableSageMakerTrainingOperator` is the provider's ``SageMakerTrainingOperator``
  that resumes the run's job rather than creating a second one.

Nothing heavy is imported at module level: the sagemaker SDK loads inside the function that
needs it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator, serialize
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException
from botocore.exceptions import ClientError

from mnist_pipeline import s3io
from mnist_pipeline.artifacts import source_package_dir

if TYPE_CHECKING:
    from airflow.sdk import Context

    from mnist_pipeline.config import PipelineConfig

JOB_NAME_MAX = 63
JOB_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_NOT_NAME_CHARS = re.compile(r"[^a-zA-Z0-9]+")
_HASH_CHARS = 8
# Room for "-a99" after a first-attempt name, so later attempts keep the whole hash.
_BASE_NAME_MAX = JOB_NAME_MAX - len("-a99")

TRAINING_IMAGE = {"framework": "pytorch", "version": "2.6", "py_version": "py312"}
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
# Job states the operator resumes instead of starting a new attempt.
RESUMABLE_STATES = {"InProgress", "Stopping", "Completed"}

# SageMaker tag values: letters, digits, spaces and _ . : / = + - @, at most 256 characters.
_TAG_VALUE_OK = re.compile(r"[^\w\s.:/=+\-@]")


# --- names -----------------------------------------------------------------------------------


def training_job_name(dag_id: str, run_id: str, attempt: int = 1) -> str:
    """The run's training job name: readable prefix + hash of (dag_id, run_id), + ``-aN`` after 1.

    ``("mnist_retraining", "scheduled__2025-01-01T02:00:00+00:00")`` →
    ``mnist-retraining-scheduled-2025-01-01T02-00-00-00-00-<8 hex>``. The hash keeps run ids that
    differ only in characters a job name cannot hold (or beyond the length limit) apart.
    """
    if not dag_id or not run_id:
        raise ValueError(f"dag_id and run_id must be non-empty, got {dag_id!r} and {run_id!r}")
    digest = hashlib.sha256(f"{dag_id}\n{run_id}".encode()).hexdigest()[:_HASH_CHARS]
    readable = _NOT_NAME_CHARS.sub("-", f"{dag_id}-{run_id}").strip("-")
    readable = readable[: _BASE_NAME_MAX - _HASH_CHARS - 1].rstrip("-")
    base = f"{readable}-{digest}" if readable else digest
    return attempt_job_name(base, attempt)


def attempt_job_name(base_name: str, attempt: int) -> str:
    """``base_name`` for attempt 1, ``base_name-aN`` after (shortened to fit 63 characters)."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if attempt == 1:
        name = base_name
    else:
        suffix = f"-a{attempt}"
        name = base_name[: JOB_NAME_MAX - len(suffix)].rstrip("-") + suffix
    if not JOB_NAME_PATTERN.match(name):
        raise ValueError(
            f"{name!r} is not a valid SageMaker job name (1-63 letters, digits and single hyphens inside)"
        )
    return name


# --- the CreateTrainingJob request ------------------------------------------------------------


def default_training_image(region: str, instance_type: str) -> str:
    """The SageMaker PyTorch training image for the region and instance type (CPU or GPU)."""
    from sagemaker.core import image_uris  # heavy: only when a config is built

    return image_uris.retrieve(
        region=region, instance_type=instance_type, image_scope="training", **TRAINING_IMAGE
    )


def encode_hyperparameters(values: Mapping[str, Any]) -> dict[str, str]:
    """Hyperparameters as SageMaker takes them: strings, JSON-encoded the way the SageMaker SDK does
    (the training toolkit JSON-decodes each one before turning it into a command-line argument)."""
    encoded = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"hyperparameter names must be non-empty strings, got {name!r}")
        encoded[name] = json.dumps(value)
    return encoded


def tag_value(value: Any) -> str:
    """A value SageMaker accepts as a tag: disallowed characters become ``_``, at most 256 long."""
    return _TAG_VALUE_OK.sub("_", str(value))[:256]


def build_training_job_config(
    *,
    job_name: str,
    role_arn: str,
    region: str,
    train_manifest_uri: str,
    holdout_uri: str,
    output_uri: str,
    source_uri: str,
    hyperparameters: Mapping[str, Any] | None = None,
    entry_point: str = "train.py",
    instance_type: str = "ml.m5.xlarge",
    instance_count: int = 1,
    volume_size_gb: int = 30,
    max_runtime_s: int = 3600,
    max_retry_attempts: int = 2,
    use_spot: bool = False,
    max_wait_s: int | None = None,
    checkpoint_uri: str | None = None,
    image_uri: str | None = None,
    tags: Mapping[str, Any] | None = None,
    metric_definitions: list[dict] | None = None,
) -> dict:
    """The CreateTrainingJob request for one run (the ``config`` of the training operator).

    See https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/sagemaker/client/create_training_job.html

    :param job_name: from :func:`training_job_name`.
    :param role_arn: the SageMaker execution role.
    :param region: the AWS region; picks the training image.
    :param train_manifest_uri: the snapshot's SageMaker manifest (channel ``train``, ``ManifestFile``).
    :param holdout_uri: the holdout prefix (channel ``test``, ``S3Prefix``).
    :param output_uri: where SageMaker writes ``<job>/output/model.tar.gz``.
    :param source_uri: the ``sourcedir.tar.gz`` from :func:`upload_source_dir`.
    :param hyperparameters: the script's arguments (``--name value``); values are JSON-encoded.
    :param entry_point: the script in the source tarball.
    :param instance_type: e.g. ``ml.m5.xlarge`` or ``ml.g5.xlarge`` (picks the CPU or GPU image).
    :param instance_count: instances for the job.
    :param volume_size_gb: the training volume.
    :param max_runtime_s: SageMaker stops the job after this long.
    :param max_retry_attempts: how often SageMaker itself restarts the job after an internal failure
        (``RetryStrategy``: a lost host, or localcloud killed mid-job), under the same name; a job
        that failed for its own reasons (``AlgorithmError``, ``ClientError``) is never retried.
    :param use_spot: managed spot training, with checkpoints, waiting up to ``max_wait_s``.
    :param max_wait_s: spot only: the limit on waiting for capacity plus running, more than
        ``max_runtime_s`` (default twice it).
    :param checkpoint_uri: spot only: where checkpoints go (default ``<output_uri>checkpoints/<job>/``).
    :param image_uri: overrides the SageMaker PyTorch image.
    :param tags: links the job to its DAG run (dag_id, run_id, snapshot sha...).
    :param metric_definitions: default: ``model_code.metric_definitions.METRIC_DEFINITIONS``.
    """
    problems = []
    if not JOB_NAME_PATTERN.match(job_name or ""):
        problems.append(f"job_name {job_name!r} is not a valid SageMaker job name")
    for name, uri in (
        ("train_manifest_uri", train_manifest_uri),
        ("holdout_uri", holdout_uri),
        ("output_uri", output_uri),
        ("source_uri", source_uri),
    ):
        if not (isinstance(uri, str) and uri.startswith("s3://")):
            problems.append(f"{name} must be an s3:// URI, got {uri!r}")
    if instance_count < 1:
        problems.append(f"instance_count must be >= 1, got {instance_count}")
    if max_runtime_s < 1:
        problems.append(f"max_runtime_s must be >= 1, got {max_runtime_s}")
    if not 0 <= max_retry_attempts <= 30:
        problems.append(f"max_retry_attempts must be 0..30 (SageMaker's limit), got {max_retry_attempts}")
    if use_spot:
        max_wait_s = 2 * max_runtime_s if max_wait_s is None else max_wait_s
        if max_wait_s <= max_runtime_s:
            problems.append(
                f"max_wait_s ({max_wait_s}) must be more than max_runtime_s ({max_runtime_s}) for spot"
            )
    if problems:
        raise ValueError("invalid training job settings: " + "; ".join(problems))

    if metric_definitions is None:
        from model_code.metric_definitions import METRIC_DEFINITIONS

        metric_definitions = METRIC_DEFINITIONS
    reserved = {
        "sagemaker_program": entry_point,
        "sagemaker_submit_directory": source_uri,
        "sagemaker_region": region,
    }
    clashes = sorted(set(hyperparameters or {}) & set(reserved))
    if clashes:
        raise ValueError(f"hyperparameters {clashes} are set by the pipeline; remove them")

    config = {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {
            "TrainingImage": image_uri or default_training_image(region, instance_type),
            "TrainingInputMode": "File",
            "MetricDefinitions": [dict(definition) for definition in metric_definitions],
        },
        "RoleArn": role_arn,
        "HyperParameters": encode_hyperparameters({**(hyperparameters or {}), **reserved}),
        "InputDataConfig": [
            _s3_channel("train", "ManifestFile", train_manifest_uri),
            _s3_channel("test", "S3Prefix", holdout_uri),
        ],
        "OutputDataConfig": {"S3OutputPath": output_uri},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": instance_count,
            "VolumeSizeInGB": volume_size_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_s},
        **({"RetryStrategy": {"MaximumRetryAttempts": max_retry_attempts}} if max_retry_attempts else {}),
        "Tags": [{"Key": key, "Value": tag_value(value)} for key, value in sorted((tags or {}).items())],
    }
    if use_spot:
        config["EnableManagedSpotTraining"] = True
        config["StoppingCondition"]["MaxWaitTimeInSeconds"] = max_wait_s
        config["CheckpointConfig"] = {
            "S3Uri": checkpoint_uri or f"{output_uri.rstrip('/')}/checkpoints/{job_name}/",
            "LocalPath": CHECKPOINT_LOCAL_PATH,
        }
    return config


def _s3_channel(name: str, data_type: str, uri: str) -> dict:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": data_type,
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "InputMode": "File",
    }


class RunFailed(AirflowFailException):
    """The run did not deploy because something broke; the message says what. Not retried:
    trying again cannot change a training job that ended or a run that already failed."""


# --- the run's job ------------------------------------------------------------------------------


def hyperparameters(params: Mapping[str, Any]) -> dict:
    """The training script's arguments from the run's Params (``model_code/train.py`` names)."""
    values = {
        "epochs": int(params["epochs"]),
        "lr": float(params["learning_rate"]),
        "batch-size": int(params["batch_size"]),
    }
    if params.get("max_train_samples"):
        values["max-train-samples"] = int(params["max_train_samples"])
    return values


def training_job_request(
    config: PipelineConfig,
    *,
    dag_id: str,
    run_id: str,
    snapshot: Mapping,
    source: Mapping,
    params: Mapping[str, Any],
) -> dict:
    """The run's CreateTrainingJob request: name derived from the run, so retries find the same job."""
    job_name = training_job_name(dag_id, run_id)
    return build_training_job_config(
        job_name=job_name,
        role_arn=config.sagemaker_role_arn,
        region=config.region,
        train_manifest_uri=snapshot["train_manifest_uri"],
        holdout_uri=config.s3_uri(config.holdout_prefix),
        output_uri=config.training_output_uri,
        source_uri=source["uri"],
        hyperparameters=hyperparameters(params),
        instance_type=params.get("instance_type") or config.instance_type,
        use_spot=bool(params.get("use_spot")),
        checkpoint_uri=config.checkpoint_uri(job_name),
        image_uri=config.training_image_uri,
        tags={
            "dag_id": dag_id,
            "run_id": run_id,
            "snapshot_sha256": snapshot["sha256"],
            "code_sha256": source["sha256"],
        },
    )


def completed_job(sm, job_name: str) -> dict:
    """The training job's description; raise unless it Completed with a model artifact."""
    description = sm.describe_training_job(TrainingJobName=job_name)
    status = description["TrainingJobStatus"]
    model_uri = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if status != "Completed" or not model_uri:
        raise RunFailed(
            f"training job {job_name} is {status} without a model to evaluate: "
            f"{description.get('FailureReason', 'no reason given')}"
        )
    return description


# --- the source tarball -------------------------------------------------------------------------


def model_code_dir() -> Path:
    """The installed ``model_code/`` package directory: the training job's source."""
    return source_package_dir("model_code")


def _source_files(source_dir: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(source_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(names):
            path = Path(root) / name
            if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                continue
            if path.is_symlink() or not path.is_file():
                raise ValueError(
                    f"{path} is a link or not a regular file; the source tarball holds files only"
                )
            files.append(path)
    return sorted(files, key=lambda path: path.relative_to(source_dir).as_posix())


def pack_source_dir(source_dir: str | os.PathLike) -> tuple[bytes, str]:
    """The script-mode ``sourcedir.tar.gz`` of ``source_dir`` and the sha256 that names it.

    Reproducible: entries sorted, owner root, mode 0644, mtime 0, no gzip timestamp or name; no
    ``__pycache__``, ``*.pyc`` or dotfiles. The sha256 is of the uncompressed tar, so it names
    the content, whatever zlib build compressed it.
    """
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"source directory {source_dir} does not exist")
    files = _source_files(source_dir)
    if not files:
        raise ValueError(f"source directory {source_dir} has no files to pack")
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for path in files:
            data = path.read_bytes()
            entry = tarfile.TarInfo(path.relative_to(source_dir).as_posix())
            entry.size, entry.mode, entry.mtime = len(data), 0o644, 0
            entry.uid = entry.gid = 0
            entry.uname = entry.gname = "root"
            archive.addfile(entry, io.BytesIO(data))
    tar_bytes = tar_buffer.getvalue()
    gz_buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz_buffer, mtime=0, compresslevel=9) as compressed:
        compressed.write(tar_bytes)
    return gz_buffer.getvalue(), hashlib.sha256(tar_bytes).hexdigest()


def upload_source_dir(s3, config: PipelineConfig, source_dir: str | os.PathLike | None = None) -> dict:
    """Pack ``source_dir`` (default ``model_code/``) and upload it unless that content is there.

    :return: ``{"uri", "key", "sha256", "uploaded"}``.
    """
    data, sha = pack_source_dir(source_dir or model_code_dir())
    key = config.sourcedir_key(sha)
    uploaded = not s3io.exists(s3, config.bucket, key)
    if uploaded:
        s3io.put_bytes(s3, config.bucket, key, data, "application/gzip")
    return {"uri": config.s3_uri(key), "key": key, "sha256": sha, "uploaded": uploaded}


# --- the operator -----------------------------------------------------------------------------


class ResumableSageMakerTrainingOperator(SageMakerTrainingOperator):
    """
    Start the run's SageMaker training job, or resume the one it already started.

    The provider's operator can only rename a job whose name exists ("timestamp") or fail. Here
    the name in ``config`` is derived from the DAG run (:func:`training_job_name`), and on a retry
    or a cleared task:

    - a job with that name that is InProgress, Stopping or Completed is the run's job: nothing
      is created, and the result is the provider's usual ``{"Training": describe(...)}``;
    - a job that Failed or was Stopped is a finished attempt: the next attempt
      ``<name>-a2``, ``-a3``... is looked up the same way and started if absent, never beside
      a live one; after ``max_job_attempts`` failed attempts the task fails, listing each
      attempt's FailureReason.

    https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/sagemaker/client/create_training_job.html

    :param config: the CreateTrainingJob request, e.g. from :func:`build_training_job_config`
        (templated).
    :param max_job_attempts: how many jobs one run may start in all.
    :param kwargs: as for ``SageMakerTrainingOperator`` (``wait_for_completion``, ``print_log``,
        ``check_interval``...), except ``check_if_job_exists`` and ``action_if_job_exists``,
        which this operator decides. Resuming an unfinished job with ``wait_for_completion``
        polls ``describe_training_job`` (also when ``deferrable``).
    """

    def __init__(self, *, config: dict, max_job_attempts: int = 3, **kwargs):
        super().__init__(config=config, check_if_job_exists=False, action_if_job_exists="fail", **kwargs)
        self.max_job_attempts = max_job_attempts

    def execute(self, context: Context) -> dict:
        base_name = self.config["TrainingJobName"]
        failed_attempts = []
        for attempt in range(1, self.max_job_attempts + 1):
            name = attempt_job_name(base_name, attempt)
            description = self._describe_if_exists(name)
            if description is None:
                self.log.info("No training job %s yet: starting attempt %d.", name, attempt)
                self.config["TrainingJobName"] = name
                return super().execute(context)
            status = description["TrainingJobStatus"]
            if status in RESUMABLE_STATES:
                self.log.info(
                    "Training job %s already exists (%s): resuming it, not starting another.", name, status
                )
                return self._resume(description)
            reason = description.get("FailureReason", "no reason given")
            failed_attempts.append(f"{name}: {status} ({reason})")
            self.log.warning(
                "Training job %s is %s (%s); looking at attempt %d.", name, status, reason, attempt + 1
            )
        raise AirflowException(
            f"all {self.max_job_attempts} training job attempts of this run ended without success: "
            + "; ".join(failed_attempts)
        )

    def _describe_if_exists(self, name: str) -> dict | None:
        try:
            return self.hook.describe_training_job(name)
        except ClientError as error:
            if error.response["Error"]["Code"] == "ValidationException":  # SageMaker's "not found"
                return None
            raise

    def _resume(self, description: dict) -> dict:
        name = description["TrainingJobName"]
        if self.wait_for_completion and description["TrainingJobStatus"] != "Completed":
            description = self.hook.check_status(
                name,
                "TrainingJobStatus",
                self.hook.describe_training_job,
                self.check_interval,
                self.max_ingestion_time,
            )
            if description["TrainingJobStatus"] != "Completed":
                raise AirflowException(
                    f"training job {name} ended {description['TrainingJobStatus']}: "
                    f"{description.get('FailureReason', 'no reason given')}"
                )
        self.serialized_training_data = serialize(description)
        return {"Training": self.serialized_training_data}
