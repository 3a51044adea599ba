"""The mnist_retraining DAG parses, is well formed, and its run policy and form are what operators expect."""

from __future__ import annotations

import copy
import datetime as dt
import json
import subprocess
import sys

import pytest
from airflow.sdk.bases.skipmixin import SkipMixin
from airflow.sdk.exceptions import ParamValidationError
from airflow.task.trigger_rule import TriggerRule

from mnist_pipeline.names import TASK_IDS
from tests.fixtures.airflow import DAGS_FOLDER, REPO

DAG_ID = "mnist_retraining"
HEAVY_MODULES = ("torch", "onnxruntime", "great_expectations", "sagemaker", "pandas")


@pytest.fixture(scope="module")
def dag(dag_bag):
    assert dag_bag.import_errors == {}, f"DAG import errors: {dag_bag.import_errors}"
    return dag_bag.dags[DAG_ID]


def test_dag_file_imports_without_errors(dag_bag):
    assert dag_bag.import_errors == {}
    assert DAG_ID in dag_bag.dag_ids


def test_dag_has_no_cycles(dag):
    from airflow.utils.dag_cycle_tester import check_cycle

    check_cycle(dag)  # raises AirflowDagCycleException on a cycle
    assert len(dag.tasks) >= 20


def test_schedule_is_nightly_without_catchup_and_one_run_at_a_time(dag):
    assert dag.schedule == "0 2 * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "nightly" in dag.doc_md.lower()


def test_every_group_is_documented(dag):
    groups = [child for child in dag.task_group.children.values() if hasattr(child, "children")]
    assert {group.group_id for group in groups} == {
        "data",
        "train",
        "evaluate",
        "register",
        "gate",
        "deploy",
        "rollback",
        "audit",
    }
    undocumented = [group.group_id for group in groups if not (group.doc_md or "").strip()]
    assert undocumented == []


def test_every_task_retries_with_capped_exponential_backoff_and_a_timeout(dag):
    problems = []
    for task in dag.tasks:
        if task.retries < 1:
            problems.append(f"{task.task_id}: retries={task.retries}")
        if not task.retry_exponential_backoff or task.retry_exponential_backoff <= 1:
            problems.append(f"{task.task_id}: retry_exponential_backoff={task.retry_exponential_backoff}")
        if task.max_retry_delay is None or task.max_retry_delay > dt.timedelta(hours=1):
            problems.append(f"{task.task_id}: max_retry_delay={task.max_retry_delay}")
        if task.execution_timeout is None:
            problems.append(f"{task.task_id}: no execution_timeout")
    assert problems == []


def test_pipeline_task_ids_the_audit_reads_exist(dag):
    missing = sorted(set(TASK_IDS.values()) - set(dag.task_ids))
    assert missing == []


def test_every_aws_task_uses_the_aws_default_connection(dag):
    aws_tasks = [task for task in dag.tasks if hasattr(task, "aws_conn_id")]
    assert len(aws_tasks) >= 10
    assert {task.task_id: task.aws_conn_id for task in aws_tasks if task.aws_conn_id != "aws_default"} == {}


def test_training_is_started_without_waiting_and_watched_from_the_triggerer(dag):
    train = dag.get_task(TASK_IDS["training"])
    sensor = dag.get_task("train.wait_for_training")
    assert train.wait_for_completion is False
    assert type(sensor).__name__ == "TrainingJobWait"
    assert sensor.deferrable is True  # in the triggerer; reschedule mode where none runs
    assert sensor.mode == "reschedule"
    assert sensor.upstream_task_ids == {TASK_IDS["training"]}


def test_audit_runs_after_everything_whatever_happened(dag):
    audit = dag.get_task("audit.record_audit")
    conclude = dag.get_task("audit.conclude_run")
    assert audit.trigger_rule == TriggerRule.ALL_DONE
    # Every task is upstream of the audit; branches and short-circuits (which would skip it if it
    # came right after them) through the tasks after them.
    assert audit.get_flat_relative_ids(upstream=True) == set(dag.task_ids) - {audit.task_id, conclude.task_id}
    skippers = {task.task_id for task in dag.tasks if isinstance(task, SkipMixin)}
    assert skippers >= {"data.check_for_new_data", "gate.quality_gate", "rollback.check_for_rollback"}
    assert audit.upstream_task_ids.isdisjoint(skippers)
    # The run's final state is the conclusion's: it must be the only leaf.
    assert [task.task_id for task in dag.leaves] == [conclude.task_id]


def test_rollback_watches_every_step_after_publishing(dag):
    check = dag.get_task("rollback.check_for_rollback")
    assert check.trigger_rule == TriggerRule.ONE_FAILED
    assert check.upstream_task_ids == {
        TASK_IDS["publish"],
        TASK_IDS["smoke_test"],
        TASK_IDS["canary_shift"],
        TASK_IDS["canary_check"],
        TASK_IDS["promote"],
    }


def test_the_gate_waits_for_registration_and_the_optional_approval(dag):
    gate = dag.get_task(TASK_IDS["gate"])
    assert gate.upstream_task_ids == {TASK_IDS["registration"], TASK_IDS["approval"]}
    assert gate.trigger_rule == TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS


def test_nothing_is_deployed_before_the_gate(dag):
    deploy_tasks = [task for task in dag.tasks if task.task_id.startswith("deploy.")]
    for task in deploy_tasks:
        assert "gate.quality_gate" in task.get_flat_relative_ids(upstream=True), task.task_id
    assert "evaluate.stop_if_dry_run" in dag.get_task(TASK_IDS["registration"]).upstream_task_ids


GOOD_CONF = [
    {},
    {"epochs": 1, "learning_rate": 0.01, "batch_size": 64},
    {"min_accuracy": 0.985, "max_regression": 0.0, "canary_weight": 0, "canary_invocations": 5},
    {"require_approval": True, "force_retrain": True, "dry_run": True},
    {"instance_type": "ml.g5.xlarge", "use_spot": True, "max_train_samples": 2000},
]
BAD_CONF = [
    {"epochs": 0},
    {"epochs": "three"},
    {"learning_rate": 0},
    {"batch_size": 1},
    {"min_accuracy": 1.5},
    {"max_regression": -0.1},
    {"canary_weight": 0.9},
    {"canary_invocations": 0},
    {"require_approval": "yes"},
    {"dry_run": 1},
    {"instance_type": "m5.xlarge"},
    {"use_spot": None},
    {"max_train_samples": -1},
]


def _validated(dag, conf: dict) -> dict:
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


@pytest.mark.parametrize("conf", GOOD_CONF)
def test_params_form_accepts_good_values(dag, conf):
    validated = _validated(dag, conf)
    assert {key: validated[key] for key in conf} == conf


@pytest.mark.parametrize("conf", BAD_CONF, ids=lambda conf: next(iter(conf)))
def test_params_form_rejects_bad_values_naming_the_param(dag, conf):
    (name,) = conf
    with pytest.raises(ParamValidationError, match=name):
        _validated(dag, conf)


def test_params_defaults_are_the_documented_ones(dag):
    defaults = _validated(dag, {})
    assert defaults["min_accuracy"] == 0.99
    assert defaults["max_regression"] == 0.002
    assert defaults["require_approval"] is False
    assert defaults["dry_run"] is False
    assert defaults["force_retrain"] is False


PARSE_SCRIPT = """
import json, runpy, sys, time
started = time.perf_counter()
import airflow.sdk  # what any DAG file pays
airflow_loaded = time.perf_counter()
runpy.run_path(sys.argv[1])
parsed = time.perf_counter()
print(json.dumps({
    "airflow_import_s": airflow_loaded - started,
    "dag_file_s": parsed - airflow_loaded,
    "heavy": sorted(name for name in sys.argv[2:] if name in sys.modules),
}))
"""


def test_parsing_the_dag_imports_nothing_heavy(record_property):
    result = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(DAGS_FOLDER / "mnist_retraining.py"), *HEAVY_MODULES],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    record_property("dag_parse_seconds", round(report["dag_file_s"], 3))
    print(
        f"\nDAG file parse: {report['dag_file_s']:.3f} s after importing airflow.sdk ({report['airflow_import_s']:.3f} s)"
    )


SCHEDULE_SCRIPT = """
import json, runpy, sys
from airflow.sdk import DAG, Asset
namespace = runpy.run_path(sys.argv[1])
(dag,) = [value for value in namespace.values() if isinstance(value, DAG)]
schedule = dag.timetable
condition = getattr(schedule, "asset_condition", None)
assets = [condition] if isinstance(condition, Asset) else []
print(json.dumps({
    "timetable": type(schedule).__name__,
    "cron": schedule.timetable.expression if assets else dag.schedule,
    "assets": [asset.name for asset in assets],
    "triggers": [
        [watcher.name, *watcher.trigger.serialize()] for asset in assets for watcher in asset.watchers
    ],
    "defaults": {name: dag.params[name] for name in ("epochs", "max_train_samples", "drift_min_samples")},
}))
"""


def parse_with(environ: dict[str, str]) -> dict:
    import os

    result = subprocess.run(
        [sys.executable, "-c", SCHEDULE_SCRIPT, str(DAGS_FOLDER / "mnist_retraining.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, **environ},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_with_a_data_events_queue_the_dag_runs_nightly_or_on_new_data():
    queue = "http://127.0.0.1:4566/000000000000/mnist-data-events"
    parsed = parse_with({"MNIST_EVENTS_QUEUE_URL": queue})
    assert parsed["timetable"] == "AssetOrTimeSchedule"
    assert parsed["cron"] == "0 2 * * *"
    assert parsed["assets"] == ["mnist_incoming_batches"]
    ((watcher, classpath, kwargs),) = parsed["triggers"]
    assert (watcher, classpath) == ("mnist_data_events", "mnist_pipeline.events.DataEventsTrigger")
    assert kwargs["sqs_queue"] == queue and kwargs["aws_conn_id"] == "aws_default"
    without = parse_with({"MNIST_EVENTS_QUEUE_URL": ""})
    assert (without["cron"], without["assets"]) == ("0 2 * * *", [])


def test_run_defaults_from_the_environment_are_what_a_run_nobody_fills_the_form_for_gets():
    parsed = parse_with({"MNIST_RUN_DEFAULTS": json.dumps({"epochs": 2, "max_train_samples": 2000})})
    assert parsed["defaults"] == {"epochs": 2, "max_train_samples": 2000, "drift_min_samples": 50}


def test_live_traffic_is_checked_before_the_run_decides_whether_to_train(dag):
    monitoring = dag.get_task(TASK_IDS["monitoring"])
    assert TASK_IDS["new_data"] in monitoring.get_flat_relative_ids(upstream=False)
    assert TASK_IDS["live_alias"] in monitoring.upstream_task_ids
