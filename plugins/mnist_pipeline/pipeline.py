"""What the mnist_retraining DAG's tasks need beyond the building blocks: small decisions and glue.

The DAG file (``dags/mnist_retraining.py``) only wires tasks together. The decisions it takes on
the way (is there work, which hyperparameters, is a person's approval needed, which way the gate
goes, is there anything to roll back, what the run's audit record says) are plain functions here,
unit tested without a scheduler.

Tasks that run whatever happened (the rollback check, the audit) read what earlier tasks returned
by task id, because an upstream that failed or was skipped has no XCom to pass along. The ids are
:data:`TASK_IDS`; the DAG integrity test checks that each is a task of the DAG.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException

from mnist_pipeline import audit
from mnist_pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

# Where the tasks that look back at the run find the others' results ("group.task").
TASK_IDS = {
    "live_alias": "check_live_alias",
    "discovery": "data.find_new_batches",
    "validation": "data.validate_data",
    "snapshot": "data.snapshot_data",
    "source": "train.upload_training_code",
    "training": "train.train_model",
    "evaluation": "evaluate.evaluate_model",
    "registration": "register.register_model",
    "approval": "gate.approve_deployment",
    "gate": "gate.quality_gate",
    "publish": "deploy.publish_lambda_version",
    "smoke_test": "deploy.smoke_test",
    "canary_shift": "deploy.shift_canary",
    "canary_check": "deploy.check_canary",
    "promote": "deploy.promote_alias",
    "rollback": "rollback.rollback_alias",
}
# A failure in one of these means a published version did not make it: roll back.
DEPLOYMENT_STEPS = ("publish", "smoke_test", "canary_shift", "canary_check", "promote")
FAILED_STATES = {"failed"}
VERDICT_KEY = "verdict"
APPROVE, REJECT = "Approve", "Reject"
# Outcomes after which the run must end failed (a rejected model is a decision, not a failure).
FAILING_OUTCOMES = {"failed", "rolled_back"}


class RunFailed(AirflowFailException):
    """The run did not deploy because something broke; the message says what. Not retried:
    trying again cannot change a training job that ended or a run that already failed."""


# --- data ---------------------------------------------------------------------------------------


def validate_batches(s3, config: PipelineConfig, run_id: str, keys: list[str]) -> dict:
    """Validate incoming batches with ``data_checks`` against the lake's reference statistics;
    quarantine the failures (:func:`mnist_pipeline.lake.check_batches`)."""
    if not keys:
        return {"accepted": [], "quarantined": []}
    from data_checks.reference import Reference  # Great Expectations: heavy, task time only
    from data_checks.validation import validate_batch
    from mnist_pipeline import lake, s3io

    reference = Reference.from_json(s3io.get_bytes(s3, config.bucket, config.reference_key))

    def check(images, labels, name: str) -> dict:
        return validate_batch(images, labels, reference, batch_name=name).to_dict()

    return lake.check_batches(s3, config, run_id, keys, check)


def has_work(checked: Mapping, force_retrain: bool) -> bool:
    """Train when a batch was accepted, or when asked to anyway."""
    accepted = len(checked.get("accepted", []))
    if accepted:
        log.info("%d new batch(es) accepted: training.", accepted)
    elif force_retrain:
        log.info("No new data, but force_retrain is set: training.")
    else:
        log.info("Nothing to do: no new accepted batches and force_retrain is off.")
    return bool(accepted) or bool(force_retrain)


# --- training -------------------------------------------------------------------------------------


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
    from mnist_pipeline.training import build_training_job_config, training_job_name

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


# --- the gate -------------------------------------------------------------------------------------


def approval_wanted(params: Mapping[str, Any], evaluation: Mapping) -> str | None:
    """Why no person needs to be asked (None: ask). Only a model the metric gate approved, in a run
    that asked for approval and may deploy, is put in front of a person."""
    if not params.get("require_approval"):
        return "require_approval is off"
    if params.get("dry_run"):
        return "dry run: nothing will be deployed"
    if not evaluation["gate"]["approved"]:
        return "the metric gate rejected the model"
    return None


def gate_verdict(evaluation: Mapping, approval: Mapping | None, require_approval: bool) -> dict:
    """Deploy or not, and why: the metric gate's decision, then the person's, when one was asked.

    :param approval: the approval task's result (``chosen_options``, ``responded_by_user``), or
        None when it did not ask.
    :return: ``{"deploy", "reasons"}``.
    """
    gate = evaluation["gate"]
    reasons = list(gate["reasons"])
    deploy = bool(gate["approved"])
    if deploy and require_approval:
        chosen = (approval or {}).get("chosen_options") or []
        who = _responder(approval)
        if chosen == [APPROVE]:
            reasons.append(f"approved by {who}")
        else:
            deploy = False
            reasons.append(f"rejected by {who}" if chosen else "approval was required but not given")
    return {"deploy": deploy, "reasons": reasons}


def _responder(approval: Mapping | None) -> str:
    user = (approval or {}).get("responded_by_user") or {}
    if isinstance(user, Mapping):
        return user.get("name") or user.get("id") or "a reviewer"
    return str(user)


def rollout_start(canary_weight: float, *, canary_task: str, promote_task: str) -> str:
    """The first alias step: the canary when it gets traffic, else straight to full promotion."""
    return canary_task if float(canary_weight) > 0 else promote_task


# --- looking back at the run ------------------------------------------------------------------------


def task_states(ti, dag_run) -> dict[str, str]:
    """Every task's state in this run, by task id (``ti`` is the running task instance)."""
    states = ti.get_task_states(dag_id=dag_run.dag_id, run_ids=[dag_run.run_id])
    return {
        task_id: str(getattr(state, "value", state))
        for task_id, state in states.get(dag_run.run_id, {}).items()
    }


def pull(ti, name: str, key: str = "return_value"):
    """What the task :data:`TASK_IDS` ``[name]`` returned, None when it did not run."""
    return ti.xcom_pull(task_ids=TASK_IDS[name], key=key)


def rollback_reason(ti, dag_run) -> str | None:
    """Why to roll back (None: nothing to roll back): a version was published and a step after it
    failed. Failures before publishing leave the alias and the registry as they were."""
    published = pull(ti, "publish")
    states = task_states(ti, dag_run)
    failed = [TASK_IDS[step] for step in DEPLOYMENT_STEPS if states.get(TASK_IDS[step]) in FAILED_STATES]
    if published is None or not failed:
        log.info("Nothing to roll back: published=%s, failed deployment steps=%s", published, failed)
        return None
    return f"version {published['version']} rolled back after {', '.join(failed)} failed"


def audit_record(ti, dag_run, params: Mapping[str, Any], sm) -> dict:
    """The run's audit record, from what every task returned and the state it ended in."""
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

    outcome = audit.decide_outcome(
        failed_tasks=failed,
        rolled_back=rollback is not None,
        nothing_to_do=checked is not None and not has_work(checked, params.get("force_retrain", False)),
        approved=None if verdict is None else verdict["deploy"],
        dry_run=bool(params.get("dry_run")) and evaluation is not None,
    )
    return audit.build_audit_record(
        run=audit.run_section(dag_run, params),
        live_alias=pull(ti, "live_alias"),
        data=audit.data_section(pull(ti, "discovery"), checked, pull(ti, "snapshot")),
        training=audit.training_section(training),
        decision=audit.decision_section(
            evaluation, package_arn, package_status, approval=_approval_summary(pull(ti, "approval"), verdict)
        ),
        deployment=audit.deployment_section(
            publish=pull(ti, "publish"),
            smoke_test=pull(ti, "smoke_test"),
            alias_shifts=[pull(ti, "canary_shift"), pull(ti, "promote")],
            canary=pull(ti, "canary_check"),
            rollback=rollback,
        ),
        result=audit.result_section(outcome, failed_tasks=failed, error=_error(failed, training, rollback)),
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


def _approval_summary(approval: Mapping | None, verdict: Mapping | None) -> dict | None:
    if approval is None:
        return None
    return {
        "chosen_options": approval.get("chosen_options"),
        "responded_by": _responder(approval),
        "deploy": None if verdict is None else verdict["deploy"],
    }


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
    if outcome["outcome"] in FAILING_OUTCOMES:
        raise RunFailed(f"run {outcome['outcome']}: {outcome.get('error') or 'see the audit record'}")
    log.info("run outcome: %s (%s)", outcome["outcome"], outcome["audit_uri"])
    return outcome["outcome"]
