"""The pipeline's settings, read in one place: Airflow Variables ``mnist_*``, then env ``MNIST_*``.

Every setting ``name`` is looked up as the Airflow Variable ``mnist_<name>`` and, when that is not
set, as the environment variable ``MNIST_<NAME>``; some have defaults. A missing or malformed
value fails with one error that lists every problem and where to fix it, before any AWS call.

The AWS credentials and endpoint are not settings here: they are the Airflow connection
``aws_default``, which is what makes the same code run against AWS or localcloud.

The S3 layout (one bucket, every prefix configurable) lives here too, so that it reads in one
place::

    data/base/*.npz  data/holdout/*.npz  data/incoming/batch-NNNN.npz  data/reference.json
    data/quarantine/<run>/<batch>.npz (+ <batch>.report.json)
    snapshots/<run>/manifest.json (+ train.manifest)   snapshots/consumed.json
    code/sourcedir-<sha256>.tar.gz   training/   evaluations/<run>/   lambda/<sha256>.zip
    audit/<run>.json   monitoring/<run>.json

``<run>`` is :func:`run_key` of the DAG run id.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields

VARIABLE_PREFIX = "mnist_"
ENV_PREFIX = "MNIST_"

_SAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class ConfigError(ValueError):
    """Settings are missing or malformed; the message lists each one and where to set it."""


@dataclass(frozen=True)
class PipelineConfig:
    """The settings the DAG and its tasks use. Build it with :func:`load_config`."""

    bucket: str
    region: str
    sagemaker_role_arn: str
    lambda_function: str = "mnist-classifier"
    lambda_alias: str = "live"
    api_id: str | None = None
    model_package_group: str = "mnist-classifier"
    training_image_uri: str | None = None  # None: the SageMaker PyTorch training image for the region
    instance_type: str = "ml.m5.xlarge"
    schedule: str = "0 2 * * *"
    base_prefix: str = "data/base/"
    holdout_prefix: str = "data/holdout/"
    incoming_prefix: str = "data/incoming/"
    quarantine_prefix: str = "data/quarantine/"
    reference_key: str = "data/reference.json"
    snapshots_prefix: str = "snapshots/"
    code_prefix: str = "code/"
    training_prefix: str = "training/"
    evaluations_prefix: str = "evaluations/"
    lambda_prefix: str = "lambda/"
    audit_prefix: str = "audit/"
    monitoring_prefix: str = "monitoring/"
    # The SNS topic alerts go to (mnist_pipeline.alerts); None: alerts are recorded, never sent.
    alerts_topic_arn: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def snapshot_prefix(self, run_id: str) -> str:
        return f"{self.snapshots_prefix}{run_key(run_id)}/"

    @property
    def consumed_index_key(self) -> str:
        return f"{self.snapshots_prefix}consumed.json"

    def run_quarantine_prefix(self, run_id: str) -> str:
        return f"{self.quarantine_prefix}{run_key(run_id)}/"

    def evaluation_prefix(self, run_id: str) -> str:
        return f"{self.evaluations_prefix}{run_key(run_id)}/"

    def audit_key(self, run_id: str) -> str:
        return f"{self.audit_prefix}{run_key(run_id)}.json"

    def monitoring_key(self, run_id: str) -> str:
        return f"{self.monitoring_prefix}{run_key(run_id)}.json"

    def sourcedir_key(self, sha256_hex: str) -> str:
        return f"{self.code_prefix}sourcedir-{sha256_hex}.tar.gz"

    def lambda_zip_key(self, sha256_hex: str) -> str:
        return f"{self.lambda_prefix}{sha256_hex}.zip"

    @property
    def training_output_uri(self) -> str:
        return self.s3_uri(self.training_prefix)

    def checkpoint_uri(self, job_name: str) -> str:
        return self.s3_uri(f"{self.training_prefix}checkpoints/{job_name}/")


def run_key(run_id: str) -> str:
    """A DAG run id as an S3 key segment: readable, and distinct for distinct run ids.

    Run ids like ``scheduled__2025-01-01T02:00:00+00:00`` hold ``:`` and ``+``, which URLs and some
    tools mangle. They become ``-``, and then a short hash of the raw id keeps two ids that differ
    only there apart. Documents stored under the key carry the raw run id.
    """
    if not run_id:
        raise ValueError("run_id must be a non-empty string")
    safe = _SAFE_KEY_CHARS.sub("-", run_id).strip("-.") or "run"
    if safe == run_id:
        return run_id
    return f"{safe}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


# --- reading and checking ---------------------------------------------------------------------

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$")
_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$")
_INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
_ALIAS = re.compile(r"^(?![0-9]+$)[A-Za-z0-9_-]{1,128}$")
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PACKAGE_GROUP = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def _matches(pattern: re.Pattern, example: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if pattern.match(value) else f"{value!r} is not valid (expected e.g. {example!r})"

    return check


def _check_schedule(value: str) -> str | None:
    if value.startswith("@") or len(value.split()) == 5:
        return None
    return f"{value!r} is neither a 5-field cron expression nor an Airflow preset like '@daily'"


def _check_prefix(value: str) -> str | None:
    if value.startswith("/") or not value.endswith("/"):
        return f"{value!r} must be a key prefix without a leading '/' and ending in '/' (e.g. 'data/base/')"
    return None


def _check_key(value: str) -> str | None:
    if value.startswith("/") or value.endswith("/"):
        return f"{value!r} must be an object key, without a leading or trailing '/'"
    return None


_CHECKS: dict[str, Callable[[str], str | None]] = {
    "bucket": _matches(_BUCKET, "mnist-pipeline-123456789012"),
    "region": _matches(_REGION, "eu-west-1"),
    "sagemaker_role_arn": _matches(_ROLE_ARN, "arn:aws:iam::123456789012:role/mnist-sagemaker"),
    "lambda_function": _matches(_FUNCTION_NAME, "mnist-classifier"),
    "lambda_alias": _matches(_ALIAS, "live"),
    "model_package_group": _matches(_PACKAGE_GROUP, "mnist-classifier"),
    "instance_type": _matches(_INSTANCE_TYPE, "ml.m5.xlarge"),
    "schedule": _check_schedule,
    "reference_key": _check_key,
    "alerts_topic_arn": _matches(_TOPIC_ARN, "arn:aws:sns:eu-west-1:123456789012:mnist-pipeline-alerts"),
}


def _check(name: str, value: str) -> str | None:
    if name.endswith("_prefix"):
        return _check_prefix(value)
    check = _CHECKS.get(name)
    return check(value) if check else None


def airflow_variables() -> Mapping[str, str | None]:
    """Airflow Variables as a read-only mapping (looked up on access, through the task SDK)."""
    from airflow.sdk import Variable

    class _Variables(Mapping):
        def __getitem__(self, key: str):
            return Variable.get(key, default=None)

        def __iter__(self):
            return iter(())

        def __len__(self) -> int:
            return 0

    return _Variables()


def load_config(
    variables: Mapping[str, str | None] | None = None, environ: Mapping[str, str] | None = None
) -> PipelineConfig:
    """Read and check every setting; raise ConfigError listing all that are missing or malformed.

    :param variables: Airflow Variables by key (``mnist_bucket``...); default: the real ones.
        Tests pass a plain dict, so no Airflow database is needed.
    :param environ: the environment for the ``MNIST_*`` fallbacks; default ``os.environ``.
    """
    variables = airflow_variables() if variables is None else variables
    environ = os.environ if environ is None else environ
    values: dict[str, str | None] = {}
    problems: list[str] = []
    for field in fields(PipelineConfig):
        variable, env = f"{VARIABLE_PREFIX}{field.name}", f"{ENV_PREFIX}{field.name.upper()}"
        where = f"set the Airflow Variable {variable!r} or the environment variable {env}"
        value = variables.get(variable)
        if value in (None, ""):
            value = environ.get(env)
        if value in (None, ""):
            if field.default is not MISSING:
                continue  # the dataclass default applies
            problems.append(f"{variable}: missing; {where}")
            continue
        value = str(value).strip()
        problem = _check(field.name, value)
        if problem:
            problems.append(f"{variable}: {problem}; {where}")
        values[field.name] = value
    if problems:
        raise ConfigError("mnist pipeline settings are missing or invalid:\n  - " + "\n  - ".join(problems))
    return PipelineConfig(**values)


# --- settings the DAG needs when it is parsed -------------------------------------------------------

DEFAULT_POKE_INTERVAL_S = 60


def dag_schedule(environ: Mapping[str, str] | None = None) -> str:
    """The DAG's schedule, read when the DAG file is parsed: from the environment only.

    Parsing happens every few seconds in the dag-processor, so it must not query the metadata DB
    for a Variable. The Variable ``mnist_schedule`` still works when set in its environment form
    ``AIRFLOW_VAR_MNIST_SCHEDULE``; ``MNIST_SCHEDULE`` is the pipeline's usual fallback.
    """
    environ = os.environ if environ is None else environ
    value = (environ.get("AIRFLOW_VAR_MNIST_SCHEDULE") or environ.get("MNIST_SCHEDULE") or "").strip()
    if not value:
        return PipelineConfig.schedule
    problem = _check_schedule(value)
    if problem:
        raise ConfigError(f"mnist_schedule: {problem}; set AIRFLOW_VAR_MNIST_SCHEDULE or MNIST_SCHEDULE")
    return value


def run_defaults(environ: Mapping[str, str] | None = None) -> dict:
    """Defaults for the DAG's Params in runs nobody fills the form for (the nightly cron, new data):
    ``MNIST_RUN_DEFAULTS``, a JSON object of Param names and values, read at parse time.

    E.g. ``{"epochs": 1, "canary_weight": 0.2}`` on a staging Airflow. The DAG checks each value
    against its Param's schema when it is parsed, so a bad one is an import error naming it.
    """
    environ = os.environ if environ is None else environ
    value = (environ.get("MNIST_RUN_DEFAULTS") or "").strip()
    if not value:
        return {}
    try:
        defaults = json.loads(value)
    except ValueError as error:
        raise ConfigError(f"MNIST_RUN_DEFAULTS: not JSON ({error})") from None
    if not isinstance(defaults, dict):
        raise ConfigError("MNIST_RUN_DEFAULTS: must be a JSON object of Param names and values")
    return defaults


def with_run_defaults(params: dict, environ: Mapping[str, str] | None = None) -> dict:
    """The DAG's ``params`` with :func:`run_defaults` applied, each checked against its Param."""
    from airflow.sdk import Param

    defaults = run_defaults(environ)
    unknown = sorted(set(defaults) - set(params))
    if unknown:
        raise ConfigError(f"MNIST_RUN_DEFAULTS names no Param of this DAG: {', '.join(unknown)}")
    changed = {
        name: Param(value, description=params[name].description, **params[name].schema)
        for name, value in defaults.items()
    }
    for param in changed.values():
        param.resolve()  # a value its schema refuses fails the parse here, naming the Param
    return {**params, **changed}


def training_poke_interval(environ: Mapping[str, str] | None = None) -> int:
    """Seconds between checks of a running training job (``MNIST_TRAINING_POKE_INTERVAL``, parse time).

    A nightly job trains for minutes, so a minute between checks is plenty; the end-to-end tests,
    whose jobs train for seconds, set it to 1.
    """
    environ = os.environ if environ is None else environ
    value = (environ.get("MNIST_TRAINING_POKE_INTERVAL") or "").strip()
    if not value:
        return DEFAULT_POKE_INTERVAL_S
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"MNIST_TRAINING_POKE_INTERVAL: {value!r} is not a whole number of seconds >= 1")
    return int(value)
