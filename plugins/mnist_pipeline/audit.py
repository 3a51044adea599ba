"""The audit record: one JSON document per DAG run at ``audit/<run>.json``, written whatever happened.

Built from plain inputs (the DAG run and the XCom results of the tasks that ran), so it is unit
tested without Airflow. Sections::

    run         run id, logical date, trigger (scheduled/manual and who), params
    trigger     why the run ran: schedule, manual or asset (new data, with the object keys the
                events named), and whether drift forced the retrain
    monitoring  live traffic since the last run against the training reference (monitor_traffic)
    live_alias  where the alias pointed at the start, the champion, what blocked a deployment
    data        batches accepted and quarantined (with reasons), the snapshot
    training    job name, status, failure reason, duration, billable seconds, metrics
    decision    evaluation (candidate and champion), gate decision and reasons, model package
    deployment  Lambda version, smoke test, alias before/after, canary, rollback
    result      outcome, failed tasks, error
    alert       whether the run wanted an alert (failed, rolled back, rejected, drift), and
                whether it was sent (SNS)

A section whose tasks did not run is ``null``. The key is :func:`mnist_pipeline.config.run_key`
of the run id; the raw run id is inside the document (``run.run_id``).

:func:`audit_record` gathers it from the run's tasks (by the ids in
:data:`mnist_pipeline.names.TASK_IDS`), :func:`record_run` writes it, and :func:`conclude` ends the
run as its outcome says. The audit only records: which batches the run consumed is decided by the
``mark_batches_consumed`` task after the deployment (:func:`mnist_pipeline.data.mark_consumed`),
and the record says what that task marked (``result.consumed_batches``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from mnist_pipeline import s3io
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.names import FAILED_STATES, VERDICT_KEY, pull, task_states

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
OUTCOMES = ("deployed", "rejected", "nothing_to_do", "dry_run", "rolled_back", "failed")
# Outcomes after which the run must end failed (a rejected model is a decision, not a failure).
FAILING_OUTCOMES = {"failed", "rolled_back"}


def _iso(value: Any) -> str | None:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return None if value is None else str(value)


def _pick(source: Mapping | None, *keys: str) -> dict | None:
    return None if source is None else {key: source.get(key) for key in keys}


# --- sections -----------------------------------------------------------------------------------


def run_section(dag_run: Any, params: Mapping[str, Any] | None = None) -> dict:
    """From ``context["dag_run"]`` (anything with the DagRun attributes) and ``context["params"]``."""
    run_type = getattr(dag_run, "run_type", None)
    run_type = getattr(run_type, "value", run_type)
    user = getattr(dag_run, "triggering_user_name", None)
    return {
        "dag_id": dag_run.dag_id,
        "run_id": dag_run.run_id,
        "logical_date": _iso(getattr(dag_run, "logical_date", None)),
        "run_after": _iso(getattr(dag_run, "run_after", None)),
        "start_date": _iso(getattr(dag_run, "start_date", None)),
        "trigger": {
            "type": run_type,
            "by": user or ("scheduler" if run_type == "scheduled" else None),
        },
        "params": dict(params or {}),
        "conf": dict(getattr(dag_run, "conf", None) or {}),
    }


def data_section(
    discovery: Mapping | None = None, checked: Mapping | None = None, snapshot: Mapping | None = None
) -> dict | None:
    """From :func:`data.find_new_batches`, :func:`data.check_batches` and :func:`data.write_snapshot`."""
    if discovery is None and checked is None and snapshot is None:
        return None
    return {
        "new_batches": list((discovery or {}).get("new", [])),
        "accepted": [_pick(batch, "key", "sha256", "rows") for batch in (checked or {}).get("accepted", [])],
        "quarantined": [
            _pick(batch, "key", "sha256", "quarantine_key", "report_key", "reasons")
            for batch in (checked or {}).get("quarantined", [])
        ],
        "snapshot": _pick(snapshot, "sha256", "rows", "shards", "manifest_uri", "train_manifest_uri"),
    }


def training_section(description: Mapping | None) -> dict | None:
    """From a DescribeTrainingJob response (datetimes as boto3 returns them)."""
    if description is None:
        return None
    started, ended = description.get("TrainingStartTime"), description.get("TrainingEndTime")
    duration = description.get("TrainingTimeInSeconds")
    if duration is None and isinstance(started, dt.datetime) and isinstance(ended, dt.datetime):
        duration = int((ended - started).total_seconds())
    resources = description.get("ResourceConfig") or {}
    return {
        "job_name": description.get("TrainingJobName"),
        "status": description.get("TrainingJobStatus"),
        "secondary_status": description.get("SecondaryStatus"),
        "failure_reason": description.get("FailureReason"),
        "created": _iso(description.get("CreationTime")),
        "started": _iso(started),
        "ended": _iso(ended),
        "duration_seconds": duration,
        "billable_seconds": description.get("BillableTimeInSeconds"),
        "instance_type": resources.get("InstanceType"),
        "instance_count": resources.get("InstanceCount"),
        "spot": bool(description.get("EnableManagedSpotTraining", False)),
        "hyperparameters": dict(description.get("HyperParameters") or {}),
        "metrics": {
            metric["MetricName"]: metric["Value"] for metric in description.get("FinalMetricDataList") or []
        },
        "model_uri": (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
    }


def decision_section(
    evaluation: Mapping | None = None,
    model_package_arn: str | None = None,
    model_package_status: str | None = None,
    approval: Mapping | None = None,
) -> dict | None:
    """From :func:`evaluate.evaluate_run`, the registry task and the optional human approval."""
    if evaluation is None and model_package_arn is None:
        return None
    evaluation = evaluation or {}
    candidate = evaluation.get("candidate") or {}
    champion = evaluation.get("champion")
    return {
        "evaluation_uri": evaluation.get("evaluation_uri"),
        "report_uri": evaluation.get("report_uri"),
        "candidate": _pick(candidate, "accuracy", "latency_ms", "model_sha256") if candidate else None,
        "champion": None
        if champion is None
        else {
            "lambda_version": champion.get("lambda_version"),
            "model_package_arn": champion.get("model_package_arn"),
            "accuracy": (champion.get("metrics") or {}).get("accuracy"),
        },
        "gate": _pick(evaluation.get("gate"), "approved", "reasons", "min_accuracy", "max_regression"),
        "approval": dict(approval) if approval else None,
        "model_package": {"arn": model_package_arn, "status": model_package_status},
    }


def deployment_section(
    publish: Mapping | None = None,
    smoke_test: Mapping | None = None,
    alias_shifts: Iterable[Mapping | None] = (),
    canary: Mapping | None = None,
    rollback: Mapping | None = None,
) -> dict | None:
    """From the Lambda operators' results; ``alias_shifts`` in the order they ran (canary, full)."""
    shifts = [shift for shift in alias_shifts if shift]
    if publish is None and not shifts and rollback is None:
        return None
    first, last = (shifts[0], shifts[-1]) if shifts else (None, None)
    return {
        "lambda_version": (publish or {}).get("version"),
        "code_sha256": (publish or {}).get("code_sha256"),
        "version_created": (publish or {}).get("created"),
        "smoke_test": dict(smoke_test) if smoke_test else None,
        "alias_before": first["before"] if first else None,
        "alias_after": (rollback or {}).get("after") or (last["after"] if last else None),
        "alias_shifts": [_pick(shift, "version", "weight", "before", "after", "changed") for shift in shifts],
        "canary": dict(canary) if canary else None,
        "rollback": dict(rollback) if rollback else None,
    }


def decide_outcome(
    *,
    failed_tasks: Iterable[str] = (),
    rolled_back: bool = False,
    nothing_to_do: bool = False,
    approved: bool | None = None,
    dry_run: bool = False,
) -> str:
    """The run's outcome, in order of precedence: failed (rolled back), nothing to do, rejected,
    dry run, deployed."""
    if list(failed_tasks):
        return "rolled_back" if rolled_back else "failed"
    if nothing_to_do:
        return "nothing_to_do"
    if approved is False:
        return "rejected"
    if dry_run:
        return "dry_run"
    return "deployed"


# Airflow's run types, as the audit names them.
TRIGGER_KINDS = {"scheduled": "schedule", "manual": "manual", "asset_triggered": "asset"}


def trigger_section(
    run: Mapping, discovery: Mapping | None, monitoring: Mapping | None, *, new_batches: bool, forced: bool
) -> dict:
    """Why the run ran: its kind (schedule, manual, asset), the keys its data events named, and
    whether drift alone made it train (no new batch, no force_retrain)."""
    run_type = (run.get("trigger") or {}).get("type")
    drift = bool((monitoring or {}).get("drift"))
    return {
        "kind": TRIGGER_KINDS.get(run_type, run_type),
        "object_keys": list(((discovery or {}).get("events") or {}).get("object_keys") or []),
        "drift_triggered": drift and not new_batches and not forced,
    }


def result_section(outcome: str, *, failed_tasks: Iterable[str] = (), error: str | None = None) -> dict:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    return {"outcome": outcome, "failed_tasks": sorted(failed_tasks), "error": error}


def build_audit_record(
    *,
    run: dict,
    result: dict,
    data: dict | None = None,
    training: dict | None = None,
    decision: dict | None = None,
    deployment: dict | None = None,
    live_alias: dict | None = None,
    trigger: dict | None = None,
    monitoring: dict | None = None,
    alert: dict | None = None,
    written_at: dt.datetime | None = None,
) -> dict:
    """The audit document from its sections (see the module docstring)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "written_at": _iso(written_at or dt.datetime.now(dt.UTC)),
        "run": run,
        "trigger": trigger,
        "monitoring": monitoring,
        "live_alias": live_alias,
        "data": data,
        "training": training,
        "decision": decision,
        "deployment": deployment,
        "result": result,
        "alert": alert,
    }


# --- storage ------------------------------------------------------------------------------------


def write_audit(s3, config: PipelineConfig, record: dict) -> str:
    """Write (or overwrite: a retried audit task holds the newer truth) the run's record."""
    return s3io.put_json(s3, config.bucket, config.audit_key(record["run"]["run_id"]), record)


def record_run(
    s3, config: PipelineConfig, record: dict, consumed_batches: Iterable[str] | None = None
) -> dict:
    """Write the run's audit record, with the batches its ``mark_batches_consumed`` task marked
    consumed (None: the task did not run, as in a run that did not deploy).

    :return: ``{"audit_uri", "outcome", "consumed_batches"}``.
    """
    run_id, outcome = record["run"]["run_id"], record["result"]["outcome"]
    record["result"]["consumed_batches"] = list(consumed_batches or [])
    uri = write_audit(s3, config, record)
    log.info("audit record for %s (%s): %s", run_id, outcome, uri)
    return {"audit_uri": uri, "outcome": outcome, "consumed_batches": record["result"]["consumed_batches"]}


def read_audit(s3, config: PipelineConfig, run_id: str) -> dict:
    return s3io.get_json(s3, config.bucket, config.audit_key(run_id))


def read_audit_if_any(s3, config: PipelineConfig, run_id: str) -> dict | None:
    """This run's record written by an earlier try of the audit step, or None."""
    return s3io.get_json(s3, config.bucket, config.audit_key(run_id), default=None)


def list_audits(s3, config: PipelineConfig, limit: int | None = None) -> list[dict]:
    """Summaries of the latest ``limit`` audit records (all by default), newest first."""
    objects = sorted(
        (
            item
            for item in s3io.list_keys(s3, config.bucket, config.audit_prefix)
            if item["Key"].endswith(".json")
        ),
        key=lambda item: (item["LastModified"], item["Key"]),
        reverse=True,
    )
    summaries = [
        summarize(s3io.get_json(s3, config.bucket, item["Key"])) | {"key": item["Key"]}
        for item in objects[:limit]
    ]
    # LastModified has a one-second resolution; the record's own timestamp orders within it.
    return sorted(summaries, key=lambda summary: (summary["written_at"] or "", summary["key"]), reverse=True)


def summarize(record: dict) -> dict:
    """One line's worth of a record: run, trigger, outcome, accuracy, Lambda version."""
    decision, deployment = record.get("decision") or {}, record.get("deployment") or {}
    return {
        "run_id": record["run"]["run_id"],
        "logical_date": record["run"].get("logical_date"),
        "trigger": record["run"].get("trigger"),
        "outcome": record["result"]["outcome"],
        "accuracy": (decision.get("candidate") or {}).get("accuracy"),
        "lambda_version": deployment.get("lambda_version"),
        "written_at": record.get("written_at"),
        "started_by": record.get("trigger"),
        "monitoring": record.get("monitoring"),
        "alert": record.get("alert"),
    }


# --- the run's record, from its tasks ---------------------------------------------------------------


def audit_record(ti, dag_run, params: Mapping[str, Any], sm) -> dict:
    """The run's audit record, from what every task returned and the state it ended in."""
    from mnist_pipeline.data import has_work
    from mnist_pipeline.gate import approval_summary

    states = task_states(ti, dag_run)
    failed = sorted(task for task, state in states.items() if state in FAILED_STATES)
    checked, evaluation = pull(ti, "validation"), pull(ti, "evaluation")
    verdict = pull(ti, "gate", key=VERDICT_KEY)
    package_arn = pull(ti, "registration")
    rollback = pull(ti, "rollback")

    training = _training_description(sm, pull(ti, "training"))
    package_status = None
    if package_arn:
        package_status = sm.describe_model_package(ModelPackageName=package_arn).get("ModelApprovalStatus")

    monitoring, discovery = pull(ti, "monitoring"), pull(ti, "discovery")
    drift = bool((monitoring or {}).get("drift"))
    forced = bool(params.get("force_retrain", False))
    outcome = decide_outcome(
        failed_tasks=failed,
        rolled_back=rollback is not None,
        nothing_to_do=checked is not None and not has_work(checked, forced, drift=drift),
        approved=None if verdict is None else verdict["deploy"],
        dry_run=bool(params.get("dry_run")) and evaluation is not None,
    )
    run = run_section(dag_run, params)
    return build_audit_record(
        run=run,
        trigger=trigger_section(
            run, discovery, monitoring, new_batches=bool((checked or {}).get("accepted")), forced=forced
        ),
        monitoring=monitoring,
        live_alias=pull(ti, "live_alias"),
        data=data_section(discovery, checked, pull(ti, "snapshot")),
        training=training_section(training),
        decision=decision_section(
            evaluation, package_arn, package_status, approval=approval_summary(pull(ti, "approval"), verdict)
        ),
        deployment=deployment_section(
            publish=pull(ti, "publish"),
            smoke_test=pull(ti, "smoke_test"),
            alias_shifts=[pull(ti, "canary_shift"), pull(ti, "promote")],
            canary=pull(ti, "canary_check"),
            rollback=rollback,
        ),
        result=result_section(outcome, failed_tasks=failed, error=_error(failed, training, rollback)),
    )


def _training_description(sm, started: Mapping | None) -> dict | None:
    if not started:
        return None
    name = started["Training"]["TrainingJobName"]
    try:
        return sm.describe_training_job(TrainingJobName=name)
    except Exception:  # the audit must be written: fall back to what the train task saw
        log.exception("could not describe training job %s; auditing the train task's view of it", name)
        return dict(started["Training"])


def _error(failed: list[str], training: Mapping | None, rollback: Mapping | None) -> str | None:
    if not failed:
        return None
    parts = [f"failed tasks: {', '.join(failed)}"]
    if training and training.get("TrainingJobStatus") in ("Failed", "Stopped"):
        parts.append(
            f"training job {training['TrainingJobName']} {training['TrainingJobStatus']}: "
            f"{training.get('FailureReason', 'no reason given')}"
        )
    if rollback:
        parts.append(f"alias {rollback['alias']} restored to version {rollback['version']}")
    return "; ".join(parts)


def conclude(outcome: Mapping) -> str:
    """End the run as its outcome says: raise for a failure (after the audit was written)."""
    # Airflow's exception, imported only here: the audit CLI reads records with this module, and
    # must not need (or configure) Airflow to do so.
    from mnist_pipeline.train import RunFailed

    if outcome["outcome"] in FAILING_OUTCOMES:
        raise RunFailed(f"run {outcome['outcome']}: {outcome.get('error') or 'see the audit record'}")
    log.info("run outcome: %s (%s)", outcome["outcome"], outcome["audit_uri"])
    return outcome["outcome"]
