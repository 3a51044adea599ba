"""Follow a DAG run as a person would watch it: task state changes, the training epochs from the
job's CloudWatch log, until the run ends."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from devtools.airflow_api import Airflow
from devtools.layout import DAG_ID, FINISHED, TRAINING_LOG_GROUP, DemoError, say


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
        from mnist_pipeline.train import training_job_name

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
                say(f"  {label}{line}")
            for line in epoch_lines(training_log.new_lines(followed)):
                say(f"  {label}training {line}")
            states[followed] = current
            if state in FINISHED:
                finished[followed] = state
                say(f"  {label or f'[{run_id}] '}run {state}")
        if run_id in finished:
            return finished
        time.sleep(poll_s)
    raise DemoError(f"run {run_id} did not finish within {timeout_s:.0f} s; see {api.base_url}")
