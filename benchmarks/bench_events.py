"""Event-driven retraining: from a batch's PutObject in ``data/incoming/`` to its run, and to live.

The stack is ``make demo``'s, started as the scheduler tests start it (``tests/fixtures/stack.py``):
PostgreSQL, localcloud and Airflow standalone by ``devtools.cli.start_stack`` in a temporary root
on free ports, the tests' small lake (``STACK_LAKE``), the DAG unpaused and the scheduled run that
unpausing creates failed. Runs that data starts have no form to fill, so Airflow is started with
``MNIST_RUN_DEFAULTS`` set to the tests' quick Params (``QUICK_CONF``: 2 epochs on 2,000 images,
a low gate): a run trains for seconds and still deploys.

Each event is ``devtools.bootstrap.feed_next_batch`` (``make feed``): one PutObject of the next
nightly batch. S3's notification goes to the SQS queue, the asset watcher in the triggerer turns
it into an asset event, and the scheduler starts an ``asset_triggered`` run. The clock starts just
before the PutObject. Figures, median over the events (one after another, each after the previous
run ended):

- **event to run start** (target <= 10 s): until the earliest ``start_date`` of the run's task
  instances (Airflow's own record, from the REST API), with the run's ``queued_at`` in the notes
  (what the watcher and scheduler took, before any task). The first event comes seconds after
  Airflow started, so its value is in the notes too: the median is the steady state's;
- **event to live model**: until the alias ``live`` points at the version the run published with
  no canary weights, seen by polling GetAlias every 0.2 s (so up to 0.2 s late), and checked
  afterwards against the run's audit record (its Lambda version, trigger "asset" with the key);
- beside it, the same runs' wall time (the run's start_date to end_date, quick Params), and its
  event-to-live baseline; the nightly run at default Params is the pipeline section's figure.

``BENCH_EVENTS_RUNS`` sets the number of events (default 3).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from benchmarks.harness import Figure

EVENTS = 3  # BENCH_EVENTS_RUNS overrides
POLL_S = 0.2
RUN_START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 600


def run() -> list[Figure]:
    events = int(os.environ.get("BENCH_EVENTS_RUNS") or EVENTS)
    with demo_stack() as stack:
        results = [event_to_live(stack) for _ in range(events)]
    return figures(results)


@contextmanager
def demo_stack():
    """The scheduler tests' stack (see the module docstring); stopped however the block ends."""
    from devtools.mnist import load_mnist
    from tests.fixtures.stack import running_stack

    with (
        tempfile.TemporaryDirectory(prefix="bench-events-") as tmp,
        running_stack(Path(tmp), load_mnist()) as stack,
    ):
        yield stack


def event_to_live(stack) -> dict:
    """Feed one batch; follow the run its event starts until it ended; the timings."""
    from devtools.airflow_api import _quote
    from devtools.cli import wait_for_data_run
    from devtools.layout import DAG_ID, FINISHED

    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    before = stack.alias()
    put = time.time()
    key = stack.feed()
    run = wait_for_data_run(stack.api, since, timeout_s=RUN_START_TIMEOUT_S, poll_s=POLL_S)
    run_id = run["dag_run_id"]
    live_at, live_version = None, None
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:  # the alias first: a run that ended has had its last say on it
        alias = stack.alias()
        if (
            live_at is None
            and alias
            and alias["version"] != (before or {}).get("version")
            and not alias["weights"]
        ):
            live_at, live_version = time.time(), alias["version"]
        if (run := stack.run(run_id))["state"] in FINISHED:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} has not ended within {RUN_TIMEOUT_S} s: {stack.states(run_id)}")
        time.sleep(POLL_S)

    listed = stack.api._request(
        "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{_quote(run_id)}/taskInstances?limit=100"
    )
    starts = [_epoch(ti["start_date"]) for ti in listed["task_instances"] if ti.get("start_date")]
    record = stack.audit(run_id)
    deployed = (record.get("deployment") or {}).get("lambda_version")
    trigger = record.get("trigger") or {}
    if run["state"] != "success" or record["result"]["outcome"] != "deployed":
        raise RuntimeError(f"run {run_id} ended {run['state']}, outcome {record['result']['outcome']}")
    if live_version is None or str(deployed) != str(live_version):
        raise RuntimeError(
            f"run {run_id} deployed version {deployed}, but the alias was seen live at {live_version}"
        )
    if trigger.get("kind") != "asset" or key not in trigger.get("object_keys", []):
        raise RuntimeError(f"run {run_id}'s audit names trigger {trigger}, not the asset event for {key}")
    result = {
        "run_id": run_id,
        "key": key,
        "to_queued_s": _epoch(run["queued_at"]) - put,  # the scheduler has created the run
        "to_start_s": min(starts) - put,
        "to_live_s": live_at - put,
        "run_s": _epoch(run["end_date"]) - _epoch(run["start_date"]),
        "version": live_version,
    }
    print(
        f"  {key}: run {run_id} queued +{result['to_queued_s']:.1f} s, first task +{result['to_start_s']:.1f} s, live (version {live_version}) "
        f"+{result['to_live_s']:.1f} s; the run took {result['run_s']:.0f} s",
        flush=True,
    )
    return result


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def figures(results: list[dict]) -> list[Figure]:
    from tests.fixtures.stack import QUICK_CONF

    queued = statistics.median(result["to_queued_s"] for result in results)
    wall = Figure(
        "events",
        "the event's run, wall time (its start_date to end_date)",
        "s",
        [result["run_s"] for result in results],
        notes=f"quick Params {json.dumps(QUICK_CONF)}; the nightly run at default Params: pipeline section",
    )
    return [
        Figure(
            "events",
            "event to run start: PutObject in incoming/ to the run's first task starting",
            "s",
            [result["to_start_s"] for result in results],
            target="<= 10",
            notes="S3 notification → SQS → asset watcher (triggerer) → scheduler → first task; the run "
            f"was queued at +{queued:.1f} s (median); the first event after the stack started: "
            f"{results[0]['to_start_s']:.1f} s",
            extra={"runs": results},
        ),
        wall,
        Figure(
            "events",
            "event to live model: PutObject to the alias on the run's version, no canary weights",
            "s",
            [result["to_live_s"] for result in results],
            baseline=wall.name,
            baseline_median=wall.median,
            notes=f"alias polled every {POLL_S} s; checked against each run's audit (version, trigger)",
        ),
    ]


if __name__ == "__main__":
    from benchmarks.harness import markdown_table

    print(markdown_table(run()))
