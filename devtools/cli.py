"""`make demo` and its companions: the whole pipeline on this machine, in one command.

``python -m devtools up|endpoint|feed|status|down|audit|alerts`` (the Makefile's targets of the
same names; ``up`` is ``make demo``):

- **up**: fetch MNIST, start PostgreSQL (Airflow's metadata database, on a unix socket only),
  localcloud and Airflow standalone (loopback only, state in ``.localcloud/`` and ``.airflow/``),
  bootstrap the bucket, lake, Lambda function, model package
  group and the HTTP API ``POST /mnist``, trigger ``mnist_retraining`` through Airflow's REST API,
  follow it to its end, then ask the endpoint about a real test digit with curl. Exit 0 only when
  the run succeeded and the endpoint answered with the right digit.
- **endpoint**: the endpoint URL, on one line.
- **feed**: put the next nightly batch into ``incoming/`` (its S3 notification goes to the data-events
  queue); then waits up to 60 s for the run the event starts (the asset watcher) and follows it;
  ``--no-wait``: only drop it.
- **alerts**: every alert the topic delivered to the local inbox, kept in ``.run/alerts.jsonl``.
- **status**: which of the processes ``up`` started still run, and where.
- **down**: stop exactly those processes (their process groups, by the ids in ``.run/``).
- **audit**: the audit table of the demo's runs (``mnist_pipeline.audit_view`` with the demo's
  connection and Variables; its own options, such as ``--json``, follow the command).

Every step checks what exists first, so running ``up`` again starts nothing twice, bootstraps
nothing twice, and its run finds nothing new to train on.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devtools.airflow_api import Airflow, _quote
from devtools.airflow_env import (
    admin_password,
    airflow_environment,
    start_airflow,
    start_postgres,
    wait_for_dag,
)
from devtools.bootstrap import (
    ALERTS_INBOX,
    ALERTS_TOPIC,
    bootstrap_demo,
    client,
    feed_next_batch,
    find_endpoint,
    pipeline_config,
    prepare_lake,
    require_localcloud,
    start_localcloud,
)
from devtools.follow import TrainingLog, follow_run
from devtools.layout import BUCKET, DAG_ID, SERVICES, DemoError, Layout, say
from devtools.processes import group_members, running_pid, stop_process


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


def start_stack(layout: Layout, mnist, plan=None) -> tuple[dict, Airflow]:
    """Everything ``up`` starts, up to a parsed DAG: the lake, PostgreSQL, localcloud (bootstrapped)
    and Airflow standalone. The tests that need the real scheduler start it the same way.

    :return: (what :func:`bootstrap_demo` returned, a logged-in REST API client).
    """
    prepare_lake(layout, mnist, plan)
    say("== PostgreSQL (Airflow's metadata database)")
    start_postgres(layout)
    say("== localcloud")
    start_localcloud(layout)
    say("== bootstrap: bucket, lake, reference, Lambda function, model package group, HTTP API")
    infra = bootstrap_demo(layout)
    say(f"  uploaded {len(infra['uploaded'])} shards; endpoint {infra['endpoint']}")
    say(f"  new batches in s3://{BUCKET}/data/incoming/ notify the queue {infra['events_queue_url']}")
    say(f"  alerts topic {infra['alerts_topic_arn']}; `make alerts` prints what its inbox received")
    say("== Airflow")
    start_airflow(
        layout,
        infra["api_id"],
        events_queue_url=infra["events_queue_url"],
        alerts_topic_arn=infra["alerts_topic_arn"],
    )
    api = Airflow(layout.airflow_url, "admin", admin_password(layout))
    wait_for_dag(api)
    return infra, api


def up(layout: Layout) -> int:
    started = time.monotonic()
    from devtools.mnist import load_mnist

    say("== data: MNIST (fetched once, verified by sha256)")
    mnist = load_mnist()
    infra, api = start_stack(layout, mnist)
    api.unpause(DAG_ID)
    run = api.trigger(DAG_ID, note="triggered by make demo")
    say(f"== run {run['dag_run_id']} (follow it at {run_page(layout, run['dag_run_id'])})")
    finished = follow_run(api, run["dag_run_id"], TrainingLog(client(layout, "logs")))
    for run_id, state in finished.items():
        say(f"  {run_id}: {state}, outcome {_outcome(layout, run_id)!r}")

    index = int(os.environ.get("DEMO_DIGIT_INDEX", "0"))
    pixels, label = mnist.test_images[index].reshape(-1).tolist(), int(mnist.test_labels[index])
    say(
        f"== endpoint: curl -X POST {infra['endpoint']} -H 'Content-Type: application/json' "
        "--data '{\"input\": [784 pixels]}'"
    )
    answer = curl_predict(infra["endpoint"], pixels)
    right = answer.get("prediction") == label
    say(
        f"  test digit #{index}: prediction {answer.get('prediction')}, true label {label} "
        f"({'correct' if right else 'WRONG'}); model {json.dumps(answer.get('model'))}"
    )
    say("")
    say(f"Airflow UI:   {layout.airflow_url}  (user admin; password in {layout.passwords_file})")
    say(f"Endpoint:     {infra['endpoint']}  (make endpoint)")
    say("New data:     make feed (the run the new batch's data event starts by itself, followed to its end)")
    say(
        "Alerts:       make alerts (what the alerts topic sent: failed, rolled-back, rejected runs and drift)"
    )
    say("Stop:         make down      What runs: make status")
    say(f"make demo took {time.monotonic() - started:.0f} s")
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
            say(f"{name:<11} running  pid {pid} ({count} process{'es' if count != 1 else ''})  {where}")
        else:
            say(f"{name:<11} stopped  {where}")
    return 0


def down(layout: Layout) -> int:
    for name in reversed(SERVICES):  # Airflow first: its tasks talk to localcloud and PostgreSQL
        # PostgreSQL's SIGTERM waits for clients to leave; SIGINT is its fast, clean shutdown.
        stop_signal = signal.SIGINT if name == "postgres" else signal.SIGTERM
        stopped = stop_process(layout.run_dir, name, stop_signal=stop_signal)
        say(f"{name}: {'stopped' if stopped else 'was not running'}")
    return 0


def audit(layout: Layout, audit_args: list[str]) -> int:
    """``mnist_pipeline.audit_view`` against the demo: its process gets the ``aws_default``
    connection and the Variables that the demo's Airflow has, and prints the audit table (or JSON).

    Its exit status is the audit view's (2: a setting is missing, 1: the bucket cannot be read).
    """
    require_localcloud(layout)
    env = airflow_environment(layout, None, os.environ)
    argv = [sys.executable, "-m", "mnist_pipeline.audit_view", *audit_args]
    return subprocess.run(argv, env=env, cwd=layout.root, check=False).returncode


def wait_for_data_run(api: Airflow, since: str, timeout_s: float = 60, poll_s: float = 1.0) -> dict:
    """The first ``asset_triggered`` run of the DAG whose run_after is ``since`` (ISO 8601) or later."""
    deadline = time.monotonic() + timeout_s
    query = f"run_type=asset_triggered&run_after_gte={_quote(since)}&order_by=run_after&limit=1"
    while time.monotonic() < deadline:
        runs = api._request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?{query}")["dag_runs"]
        if runs:
            return runs[0]
        time.sleep(poll_s)
    raise DemoError(
        f"no run started by the new data within {timeout_s:.0f} s. Check the triggerer's log "
        f"(.run/airflow.log and .airflow/logs/), the queue mnist-data-events in localcloud, and that "
        "Airflow was started with MNIST_EVENTS_QUEUE_URL (make down, then make demo)"
    )


def feed(layout: Layout, *, wait: bool = True) -> int:
    """Drop the next nightly batch into incoming/; then wait for the run the data event starts by
    itself (no trigger) and follow it to its end."""
    from datetime import UTC, datetime, timedelta

    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    started = time.monotonic()
    say(f"fed s3://{BUCKET}/{feed_next_batch(layout)}")
    if not wait:
        return 0
    api = Airflow(layout.airflow_url, "admin", admin_password(layout))
    say("waiting for the run that the new data starts (up to 60 s) ...")
    run = wait_for_data_run(api, since)
    say(
        f"run {run['dag_run_id']} started by the new data after {time.monotonic() - started:.1f} s "
        "(no manual trigger)"
    )
    finished = follow_run(api, run["dag_run_id"], TrainingLog(client(layout, "logs")))
    return 0 if finished.get(run["dag_run_id"]) == "success" else 1


def alerts(layout: Layout) -> int:
    """Every alert the demo's inbox received, oldest first: new ones are moved from the queue
    (received, appended to ``.run/alerts.jsonl``, then deleted), so running it twice shows the
    same history plus what arrived since."""
    require_localcloud(layout)
    sqs = client(layout, "sqs")
    try:
        inbox = sqs.get_queue_url(QueueName=ALERTS_INBOX)["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        raise DemoError(f"no queue {ALERTS_INBOX!r} in localcloud; run `make demo`") from None
    log_path = layout.run_dir / "alerts.jsonl"
    while messages := sqs.receive_message(
        QueueUrl=inbox, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=30
    ).get("Messages", []):
        with log_path.open("a") as log_file:
            for message in messages:
                envelope = json.loads(message["Body"])  # SNS's envelope (RawMessageDelivery off)
                record = {key: envelope.get(key) for key in ("Timestamp", "Subject", "Message")}
                log_file.write(json.dumps(record) + "\n")
        for message in messages:  # deleted only once written
            sqs.delete_message(QueueUrl=inbox, ReceiptHandle=message["ReceiptHandle"])
    records = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    if not records:
        say(f"no alerts yet (topic {ALERTS_TOPIC}, inbox {ALERTS_INBOX})")
    for record in records:
        say(f"{record['Timestamp']}  {record['Subject'] or '(no subject)'}")
        say(f"  {record['Message']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "endpoint", "feed", "status", "down", "audit", "alerts"])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the project directory (default: .)")
    # audit passes the rest to the audit view (--json, --limit N, --airflow-url URL)
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "audit" and not (args.command == "feed" and rest == ["--no-wait"]):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        layout = Layout.from_env(args.root)
        if args.command == "audit":
            return audit(layout, rest)
        if args.command == "up":
            return up(layout)
        if args.command == "endpoint":
            say(find_endpoint(layout))
            return 0
        if args.command == "alerts":
            return alerts(layout)
        if args.command == "feed":
            return feed(layout, wait="--no-wait" not in rest)
        return status(layout) if args.command == "status" else down(layout)
    except DemoError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
