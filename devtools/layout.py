"""Where the demo keeps its state and what it names: ports, directories, the local account's ARNs.

Everything ``make demo`` writes lives inside the project (all gitignored): ``.run/`` (pid files,
logs, the seeded lake), ``.airflow/`` (AIRFLOW_HOME, PostgreSQL's data) and ``.localcloud/``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DAG_ID = "mnist_retraining"
ACCOUNT = "000000000000"  # localcloud's one account
REGION = "us-east-1"
BUCKET = "mnist-demo"
SAGEMAKER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/mnist-sagemaker"
LAMBDA_ROLE = f"arn:aws:iam::{ACCOUNT}:role/mnist-lambda"
API_NAME = "mnist"
ROUTE_KEY = "POST /mnist"
# Recorded on the job, never pulled by localcloud; naming it saves importing the sagemaker SDK per run.
TRAINING_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6-cpu-py312"
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
FINISHED = {"success", "failed"}
# In start order; `down` stops them in reverse (Airflow first: it uses the other two).
SERVICES = ("postgres", "localcloud", "airflow")
POSTGRES_USER = "postgres"
# Created by start_postgres. Not "airflow": Airflow masks the parts of its database URL in every log
# line, and a run named "nightly-airflow-test" would read "nightly-***-test".
POSTGRES_DATABASE = "airflow_metadata"
_MAX_SOCKET_PATH = 107  # sun_path, less its terminating NUL


class DemoError(RuntimeError):
    """Something the person running the demo must fix; the message says what."""


@dataclass(frozen=True)
class Layout:
    """Where the demo keeps its state, inside the project (all gitignored), and its ports."""

    root: Path
    localcloud_port: int = 4566
    airflow_port: int = 8080

    @classmethod
    def from_env(cls, root: Path, environ: Mapping[str, str] = os.environ) -> Layout:
        return cls(
            root=Path(root).resolve(),
            localcloud_port=_port(environ, "LOCALCLOUD_PORT", 4566),
            airflow_port=_port(environ, "AIRFLOW_PORT", 8080),
        )

    @property
    def run_dir(self) -> Path:
        return self.root / ".run"

    @property
    def airflow_home(self) -> Path:
        return self.root / ".airflow"

    @property
    def localcloud_dir(self) -> Path:
        return self.root / ".localcloud"

    @property
    def lake_dir(self) -> Path:
        return self.run_dir / "lake"

    @property
    def pending_dir(self) -> Path:
        """Nightly batches not fed yet (``feed`` moves the next one into the lake's incoming/)."""
        return self.run_dir / "lake-pending"

    @property
    def localcloud_url(self) -> str:
        return f"http://127.0.0.1:{self.localcloud_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def passwords_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"

    @property
    def postgres_data_dir(self) -> Path:
        return self.airflow_home / "postgres"

    @property
    def postgres_socket_dir(self) -> Path:
        """Where PostgreSQL's unix socket lives: ``.run/pg``, or a short directory in the temp dir
        when that path would be too long for a socket address."""
        preferred = self.run_dir / "pg"
        if len(str(preferred / ".s.PGSQL.5432")) <= _MAX_SOCKET_PATH:
            return preferred
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"mnist-demo-pg-{digest}"

    @property
    def metadata_db_url(self) -> str:
        return f"postgresql+psycopg2://{POSTGRES_USER}@/{POSTGRES_DATABASE}?host={self.postgres_socket_dir}"


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise DemoError(f"{name}={value!r} is not a TCP port (1-65535)")
    return int(value)


def say(message: str) -> None:
    """A line for the person running the demo, shown at once."""
    print(message, flush=True)
