"""
# mnist_retraining

Nightly retraining of the MNIST digit classifier, from new data to the `live` Lambda alias. This
is the one step-by-step story of a run; each step's logic is the `mnist_pipeline` module named
with it, and task ids and XCom keys come from `mnist_pipeline.names`.

0. **check_live_alias** (`mnist_pipeline.live_alias`): where the alias points at the start of
   the run. Leftover canary weights (a deployment that did not finish), or a version no Approved
   model package records (deployed by hand, or rejected since), block this run's deployment: the
   gate rejects, saying why, the audit records what was found, and that version is not treated as
   the champion. Terraform's first version is marked as the placeholder (its description), so a
   first deployment on AWS is not blocked.

   **monitor_traffic** (`mnist_pipeline.monitor`): the live alias's traffic since the last run,
   read from its CloudWatch log records (one compact feature record per request: prediction,
   confidence, mean intensity, nonzero fraction, model sha; never pixels), compared with the
   training reference of `data_checks/` → `monitoring/<run>.json`. Drift beyond the `drift_*`
   Params forces a retrain even without new batches (the audit says "drift_triggered"), so the
   champion is re-evaluated on fresh data, and sends an alert.

1. **data** (`mnist_pipeline.data`): find the incoming batches (`data/incoming/batch-NNNN.npz`)
   that no deployed run consumed (a run cleared after it deployed finds its own batches again,
   and repeats itself); validate each (Great Expectations, `data_checks/` against
   `data/reference.json`); move failures to `data/quarantine/<run>/<batch>.<sha256>.npz` with
   their validation report. Nothing is lost: the copy is made from exactly the validated bytes
   (`CopySourceIfMatch`) and checked by sha256, and the incoming object is deleted only if it
   still holds them (`IfMatch`), so a batch re-uploaded meanwhile stays for the next run. A file
   that is not a shard, or is hostile (a header claiming 10^9 images, a deflate bomb, a truncated
   upload), is quarantined the same way, never crashed on: shards are read header-first within
   bounds (64 MiB, 100,000 images). Then the run's immutable snapshot
   (`snapshots/<run>/manifest.json`: every shard with its sha256). Nothing new and no
   `force_retrain`: the run stops here and its audit record says "nothing_to_do".

2. **train** (`mnist_pipeline.train`): one SageMaker training job per run, named after the run,
   so a retry or a cleared task resumes that job instead of starting another (the provider's
   operator, subclassed, with `wait_for_completion=False`); the wait is deferred to the provider's
   `SageMakerTrigger` in the triggerer (`mnist_pipeline.training_wait`), holding no worker, or,
   with `MNIST_TRAINING_WAIT=reschedule` where no triggerer runs, a reschedule-mode sensor. The
   request: the PyTorch training image, the trainer's `MetricDefinitions`, a `ManifestFile`
   channel of exactly the snapshot's shards, the holdout channel, spot with checkpoints when
   asked, tags linking the job to the run, and
   `RetryStrategy` (2 attempts): after an internal failure (a lost host) SageMaker restarts the
   same job itself; a job that failed for its own reasons is never retried.

3. **evaluate** (`mnist_pipeline.evaluate`): the job's `model.tar.gz`, fetched and extracted
   safely, once; its exact `model.onnx` and the champion (the Approved version `check_live_alias`
   found) scored on the holdout: accuracy, per-class accuracy, confusion matrix, latency, model
   sha256 → `evaluations/<run>/evaluation.json` and `report.md`, with the files the Lambda zip
   needs kept under `evaluations/<run>/model/`. `dry_run` stops here.

4. **register** (`mnist_pipeline.register`): one model package per run (a retry finds it by its
   `run_id` metadata), with its metrics and its links to run, job and data.

5. **gate** (`mnist_pipeline.gate`): accuracy ≥ `min_accuracy` and ≥ champion − `max_regression`;
   with `require_approval`, a person decides too (Airflow's human-in-the-loop UI). A rejected
   model's package is marked Rejected; the alias is untouched; the outcome is "rejected".

6. **deploy** (`mnist_pipeline.deploy`): the deterministic zip, built only from the model.onnx
   whose sha256 the evaluation scored (the kept files, not the archive again) → S3 →
   `update_function_code` → `publish_version` (unchanged code yields no new version), waiting
   until the version is Active → smoke test of that *version* on holdout digits (every answer must
   name the evaluated model's sha256) and a malformed request → `canary_weight` of the alias's
   traffic, checked with at least `canary_invocations` calls of which the new version itself
   must answer at least 5 (`ExecutedVersion`) → all of it → package Approved with the Lambda
   version. Each alias move is made only from the state this run last recorded (version, weights,
   `RevisionId`): a change made elsewhere meanwhile fails the task, naming both. Then, and only
   then, `mark_batches_consumed` (`mnist_pipeline.data`) records the run's batches consumed, so
   the next run does not train on them again; a run that fails or is rejected consumes nothing.

7. **rollback** (`mnist_pipeline.rollback`): when a step after publishing fails, the alias goes
   back to the version it had at the start of the run, but only if it is still exactly where this
   run left it (otherwise the task fails, naming both states: a later hotfix or a newer run's
   deployment is never reverted); the package is marked Rejected; the run then fails with the
   reason.

8. **audit** (`mnist_pipeline.audit`): `audit/<run>.json` in S3, whatever happened (run,
   trigger, params, data accepted/quarantined and consumed, training job and metrics,
   evaluation, gate decision, package, Lambda version, alias before/after, outcome, error).
   `conclude_run` then fails the run if it failed.

When it runs (`mnist_pipeline.events`): the nightly cron, **or** new data. S3 notifications of
new batches in `data/incoming/` go to an SQS queue, and an asset watcher in the triggerer turns
them into asset events on `mnist_incoming_batches`; with `max_active_runs=1`, events arriving
while a run is in progress start one run after it, and the data step takes every batch no run
consumed. The run's data step deletes the messages of the events that started it. With no
`MNIST_EVENTS_QUEUE_URL` at parse time, the cron alone. Runs nobody fills the form for take the
Params' defaults, or `MNIST_RUN_DEFAULTS` (JSON) where set.

Alerts (`mnist_pipeline.alerts`): a failed, rolled-back or rejected run, and drift, publish one
message to the SNS topic `mnist_alerts_topic_arn` (the provider's `SnsNotifier`), sent by the
audit step, which records whether it went out; an audit that cannot be written alerts from its
failure callback.

Settings: Airflow Variables `mnist_*` or environment `MNIST_*` (see `mnist_pipeline.config`), and
the connection `aws_default`, which alone decides whether this talks to AWS or to localcloud.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook
from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.providers.amazon.aws.hooks.sqs import SqsHook
from airflow.sdk import DAG, Param, TaskGroup, task
from airflow.task.trigger_rule import TriggerRule

from mnist_pipeline import alerts, audit, data, deploy, evaluate, events, gate, live_alias, monitor, train
from mnist_pipeline.config import (
    PipelineConfig,
    dag_schedule,
    load_config,
    training_poke_interval,
    with_run_defaults,
)
from mnist_pipeline.gate import DeploymentApprovalOperator
from mnist_pipeline.names import TASK_IDS as IDS
from mnist_pipeline.names import VERDICT_KEY, pull, task_name
from mnist_pipeline.register import ModelPackageStatusOperator, RegisterModelPackageOperator
from mnist_pipeline.rollback import LambdaAliasRollbackOperator, rollback_reason
from mnist_pipeline.training_wait import TrainingJobWait, training_wait_deferrable

AWS_CONN_ID = "aws_default"


def xcom(name: str, *path: str, key: str = "return_value") -> str:
    """A Jinja template for a value inside what the task ``IDS[name]`` returned (for string template
    fields)."""
    keys = "".join(f"['{item}']" for item in path)
    return "{{ ti.xcom_pull(task_ids='" + IDS[name] + "', key='" + key + "')" + keys + " }}"


def step_doc(group: str) -> str:
    """The group's step as this module's docstring (the DAG's docs) tells it, so that the story of
    a run is written once."""
    steps = [paragraph for paragraph in __doc__.split("\n\n") if f". **{group}** (" in paragraph]
    if len(steps) != 1:
        raise ValueError(
            f"the DAG's docstring must tell step {group!r} once, in one paragraph; found {len(steps)}"
        )
    return steps[0].strip()


def setting(name: str) -> str:
    """A template for one of the run's settings (as ``load_settings`` read them).

    A template rather than an XComArg, so that the operators do not all hang off
    ``load_settings`` in the graph: an upstream that always succeeds would satisfy the trigger
    rule of ``promote_alias`` (none failed, at least one succeeded) in runs that deploy nothing.
    """
    return xcom("settings", key=name)


def aws(settings: dict, *services: str) -> tuple:
    """The run's settings as a ``PipelineConfig``, then boto3 clients through the aws_default
    connection (AWS or localcloud: the connection decides), one per service named."""
    hooks = {
        "s3": S3Hook,
        "lambda": LambdaHook,
        "sagemaker": SageMakerHook,
        "sqs": SqsHook,
        "logs": AwsLogsHook,
    }
    return (
        PipelineConfig(**settings),
        *(hooks[service](aws_conn_id=AWS_CONN_ID).conn for service in services),
    )


default_args = {
    "owner": "mlops",
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=10),
    "execution_timeout": dt.timedelta(minutes=30),
}

params = {
    "epochs": Param(3, type="integer", minimum=1, maximum=50, description="Training epochs."),
    "learning_rate": Param(
        0.003, type="number", exclusiveMinimum=0, maximum=1, description="Peak learning rate (one-cycle)."
    ),
    "batch_size": Param(128, type="integer", minimum=8, maximum=4096, description="Training batch size."),
    "min_accuracy": Param(
        0.99, type="number", minimum=0, maximum=1, description="Holdout accuracy the model must reach."
    ),
    "max_regression": Param(
        0.002, type="number", minimum=0, maximum=1, description="How far below the live model it may be."
    ),
    "canary_weight": Param(
        0.1, type="number", minimum=0, maximum=0.5, description="Traffic share for the canary; 0 skips it."
    ),
    "canary_invocations": Param(
        20, type="integer", minimum=1, maximum=1000, description="Calls through the alias during the canary."
    ),
    "require_approval": Param(False, type="boolean", description="A person approves before deployment."),
    "force_retrain": Param(False, type="boolean", description="Train even without new data."),
    "dry_run": Param(False, type="boolean", description="Train and evaluate; never register or deploy."),
    "instance_type": Param(
        None,
        type=["null", "string"],
        pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$",
        description="SageMaker instance type; empty: the mnist_instance_type setting.",
    ),
    "use_spot": Param(False, type="boolean", description="Managed spot training (with checkpoints)."),
    "max_train_samples": Param(
        0, type="integer", minimum=0, description="Quick trial: train on this many images; 0: all."
    ),
    # Live-traffic drift: what the monitor_traffic step calls drift (see mnist_pipeline.monitor).
    **{
        name: Param(
            spec["default"],
            type=spec["type"],
            minimum=spec["minimum"],
            maximum=spec["maximum"],
            description=spec["description"],
        )
        for name, spec in monitor.DRIFT_PARAMS.items()
    },
}
params = with_run_defaults(params)


with DAG(
    dag_id="mnist_retraining",
    description="Nightly MNIST retraining: validate, train, evaluate, gate, deploy to Lambda, audit.",
    doc_md=__doc__,
    # The nightly cron, or new data in data/incoming/ when a data-events queue is configured.
    schedule=events.schedule(dag_schedule(), aws_conn_id=AWS_CONN_ID),
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    params=params,
    tags=["mnist", "sagemaker", "lambda"],
) as dag:

    @task(task_id=task_name("settings"), multiple_outputs=True)
    def load_settings() -> dict:
        """Read and check every setting once, so the whole run uses the same ones."""
        return load_config().as_dict()

    settings = load_settings()

    @task(task_id=task_name("live_alias"), multiple_outputs=True)
    def check_live_alias(settings: dict) -> dict:
        """Where the alias points now: the champion, and anything that makes moving it unsafe."""
        config, lambda_conn, sm = aws(settings, "lambda", "sagemaker")
        return live_alias.inspect_live_alias(lambda_conn, sm, config)

    live = check_live_alias(settings)

    @task(task_id=task_name("monitoring"))
    def monitor_traffic(settings: dict, live: dict, run_id: str | None = None, params: dict | None = None):
        """Live traffic since the last run against the training reference: drift forces a retrain."""
        config, logs, s3 = aws(settings, "logs", "s3")
        thresholds = monitor.thresholds_from_params(params)
        return monitor.monitor_traffic(logs, s3, config, run_id=run_id, live=live, thresholds=thresholds)

    monitoring = monitor_traffic(settings, live)

    with TaskGroup("data", tooltip="Find, validate and snapshot the data", doc_md=step_doc("data")):

        @task(task_id=task_name("discovery"))
        def find_new_batches(settings: dict, run_id: str | None = None, triggering_asset_events=None) -> dict:
            config, s3, sqs = aws(settings, "s3", "sqs")
            found = data.find_new_batches(s3, config, run_id)
            # The data events that started this run are recorded (this run exists): delete them.
            return {
                **found,
                "events": events.acknowledge(sqs, events.triggering_events(triggering_asset_events)),
            }

        @task(task_id=task_name("validation"))
        def validate_data(settings: dict, discovery: dict, run_id: str | None = None) -> dict:
            config, s3 = aws(settings, "s3")
            return data.validate_batches(s3, config, run_id, discovery["new"])

        @task.short_circuit(task_id=task_name("new_data"), ignore_downstream_trigger_rules=False)
        def check_for_new_data(checked: dict, monitoring: dict, params: dict | None = None) -> bool:
            return data.has_work(checked, params["force_retrain"], drift=monitoring["drift"])

        @task(task_id=task_name("snapshot"), multiple_outputs=True)
        def snapshot_data(settings: dict, checked: dict, run_id: str | None = None) -> dict:
            config, s3 = aws(settings, "s3")
            return data.write_snapshot(s3, config, run_id, checked["accepted"])

        checked = validate_data(settings, find_new_batches(settings))
        snapshot = snapshot_data(settings, checked)
        check_for_new_data(checked, monitoring) >> snapshot

    with TaskGroup("train", tooltip="Train on SageMaker", doc_md=step_doc("train")):

        @task(task_id=task_name("source"), multiple_outputs=True)
        def upload_training_code(settings: dict) -> dict:
            config, s3 = aws(settings, "s3")
            return train.upload_source_dir(s3, config)

        @task(task_id=task_name("training_config"))
        def configure_training_job(
            settings: dict, snapshot: dict, source: dict, dag_run=None, params: dict | None = None
        ) -> dict:
            return train.training_job_request(
                PipelineConfig(**settings),
                dag_id=dag_run.dag_id,
                run_id=dag_run.run_id,
                snapshot=snapshot,
                source=source,
                params=params,
            )

        source = upload_training_code(settings)
        snapshot >> source
        train_model = train.ResumableSageMakerTrainingOperator(
            task_id=task_name("training"),
            config=configure_training_job(settings, snapshot, source),
            wait_for_completion=False,
            print_log=False,
            aws_conn_id=AWS_CONN_ID,
            execution_timeout=dt.timedelta(minutes=10),
        )
        # In the triggerer (MNIST_TRAINING_WAIT=deferrable, the default), or as a reschedule-mode
        # sensor (=reschedule) where no triggerer runs.
        wait_for_training = TrainingJobWait(
            task_id=task_name("training_wait"),
            job_name=xcom("training", "Training", "TrainingJobName"),
            print_log=False,
            deferrable=training_wait_deferrable(),
            mode="reschedule",
            poke_interval=training_poke_interval(),
            timeout=dt.timedelta(hours=6).total_seconds(),
            aws_conn_id=AWS_CONN_ID,
            execution_timeout=dt.timedelta(minutes=5),
        )
        train_model >> wait_for_training

    with TaskGroup("evaluate", tooltip="Evaluate the model and the champion", doc_md=step_doc("evaluate")):

        @task(task_id=task_name("evaluation"), multiple_outputs=True)
        def evaluate_model(
            settings: dict, started: dict, live: dict, run_id: str | None = None, params: dict | None = None
        ):
            config, s3, sm = aws(settings, "s3", "sagemaker")
            job = train.completed_job(sm, started["Training"]["TrainingJobName"])
            return {
                **evaluate.evaluate_run(
                    s3,
                    config,
                    live=live,
                    run_id=run_id,
                    training_job=job["TrainingJobName"],
                    model_uri=job["ModelArtifacts"]["S3ModelArtifacts"],
                    min_accuracy=params["min_accuracy"],
                    max_regression=params["max_regression"],
                ),
                "training_image": job["AlgorithmSpecification"]["TrainingImage"],
            }

        @task.short_circuit(task_id=task_name("not_dry_run"), ignore_downstream_trigger_rules=False)
        def stop_if_dry_run(params: dict | None = None) -> bool:
            return not params["dry_run"]

        evaluation = evaluate_model(settings, train_model.output, live)
        wait_for_training >> evaluation
        not_dry_run = stop_if_dry_run()
        evaluation >> not_dry_run

    with TaskGroup("register", tooltip="Register the model package", doc_md=step_doc("register")):
        register_model = RegisterModelPackageOperator(
            task_id=task_name("registration"),
            run_id="{{ run_id }}",
            evaluation_uri=evaluation["evaluation_uri"],
            image_uri=evaluation["training_image"],
            model_url=evaluation["model_uri"],
            package_group_name=setting("model_package_group"),
            package_desc="MNIST classifier retrained by mnist_retraining run {{ run_id }}",
            customer_metadata={
                "dag_id": "{{ dag.dag_id }}",
                "training_job": evaluation["training_job"],
                "snapshot_sha256": snapshot["sha256"],
                "code_sha256": source["sha256"],
                "accuracy": evaluation["accuracy"],
            },
            aws_conn_id=AWS_CONN_ID,
        )
        not_dry_run >> register_model

    with TaskGroup("gate", tooltip="Decide: deploy or reject", doc_md=step_doc("gate")):
        approve_deployment = DeploymentApprovalOperator(task_id=task_name("approval"), evaluation=evaluation)

        # Reads evaluation and approval from XCom: as arguments, a succeeded evaluate_model would
        # satisfy "none failed, one succeeded" in a dry run, when register and approval are skipped.
        @task.branch(task_id=task_name("gate"), trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        def quality_gate(ti=None, params: dict | None = None) -> str:
            verdict = gate.gate_verdict(
                pull(ti, "evaluation"), pull(ti, "approval"), params["require_approval"]
            )
            ti.xcom_push(key=VERDICT_KEY, value=verdict)
            return IDS["lambda_package"] if verdict["deploy"] else IDS["reject"]

        reject_model = ModelPackageStatusOperator(
            task_id=task_name("reject"),
            model_package_arn=register_model.output,
            status="Rejected",
            description="{{ ti.xcom_pull(task_ids='"
            + IDS["gate"]
            + "', key='"
            + VERDICT_KEY
            + "')['reasons'] | join('; ') }}",
            aws_conn_id=AWS_CONN_ID,
        )
        decision = quality_gate()
        register_model >> approve_deployment
        [register_model, approve_deployment] >> decision >> reject_model

    with TaskGroup("deploy", tooltip="Ship to Lambda", doc_md=step_doc("deploy")):

        @task(task_id=task_name("lambda_package"), multiple_outputs=True)
        def upload_lambda_package(settings: dict, evaluation: dict, run_id: str | None = None) -> dict:
            config, s3 = aws(settings, "s3")
            package = deploy.upload_lambda_package(
                s3, config, evaluation["model_files"], evaluation["model_sha256"]
            )
            description = deploy.version_description(
                run_id, evaluation["training_job"], evaluation["accuracy"]
            )
            return {**package, "description": description}

        lambda_zip = upload_lambda_package(settings, evaluation)
        publish = deploy.LambdaPublishVersionOperator(
            task_id=task_name("publish"),
            function_name=setting("lambda_function"),
            s3_bucket=lambda_zip["s3_bucket"],
            s3_key=lambda_zip["s3_key"],
            code_sha256=lambda_zip["code_sha256"],
            description=lambda_zip["description"],
            multiple_outputs=True,
            aws_conn_id=AWS_CONN_ID,
        )
        smoke_test = deploy.MnistEndpointSmokeTestOperator(
            task_id=task_name("smoke_test"),
            function_name=setting("lambda_function"),
            version=publish.output["version"],
            examples_uri=evaluation["examples_uri"],
            min_accuracy="{{ params.min_accuracy }}",
            expected_model_sha256=evaluation["model_sha256"],
            aws_conn_id=AWS_CONN_ID,
        )

        @task.branch(task_id=task_name("rollout"))
        def choose_rollout(params: dict | None = None) -> str:
            return deploy.rollout_start(
                params["canary_weight"], canary_task=IDS["canary_shift"], promote_task=IDS["promote"]
            )

        shift_canary = deploy.LambdaAliasShiftOperator(
            task_id=task_name("canary_shift"),
            function_name=setting("lambda_function"),
            alias=setting("lambda_alias"),
            version=publish.output["version"],
            weight="{{ params.canary_weight }}",
            previous_steps=[IDS["live_alias"]],
            aws_conn_id=AWS_CONN_ID,
        )
        check_canary = deploy.MnistCanaryCheckOperator(
            task_id=task_name("canary_check"),
            function_name=setting("lambda_function"),
            alias=setting("lambda_alias"),
            version=publish.output["version"],
            examples_uri=evaluation["examples_uri"],
            invocations="{{ params.canary_invocations }}",
            aws_conn_id=AWS_CONN_ID,
        )
        promote_alias = deploy.LambdaAliasShiftOperator(
            task_id=task_name("promote"),
            function_name=setting("lambda_function"),
            alias=setting("lambda_alias"),
            version=publish.output["version"],
            weight=1.0,
            previous_steps=[IDS["live_alias"], IDS["canary_shift"]],
            trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
            aws_conn_id=AWS_CONN_ID,
        )
        approve_model = ModelPackageStatusOperator(
            task_id=task_name("approve"),
            model_package_arn=register_model.output,
            status="Approved",
            description=f"deployed as {xcom('publish', key='function_name')} version "
            + xcom("publish", key="version"),
            metadata={
                "lambda_function": setting("lambda_function"),
                "lambda_version": publish.output["version"],
            },
            aws_conn_id=AWS_CONN_ID,
        )

        @task(task_id=task_name("consumed"))
        def mark_batches_consumed(settings: dict, run_id: str | None = None) -> list[str]:
            """Only a deployed run consumes its batches: the next run then does not find them."""
            config, s3 = aws(settings, "s3")
            return data.mark_consumed(s3, config, run_id)

        rollout = choose_rollout()
        consumed = mark_batches_consumed(settings)
        decision >> lambda_zip
        publish >> smoke_test >> rollout >> [shift_canary, promote_alias]
        shift_canary >> check_canary >> promote_alias >> approve_model >> consumed

    with TaskGroup("rollback", tooltip="Undo a failed deployment", doc_md=step_doc("rollback")):

        @task.short_circuit(
            task_id=task_name("rollback_check"),
            trigger_rule=TriggerRule.ONE_FAILED,
            ignore_downstream_trigger_rules=False,
        )
        def check_for_rollback(ti=None, dag_run=None) -> str | None:
            return rollback_reason(ti, dag_run)

        rollback_alias = LambdaAliasRollbackOperator(
            task_id=task_name("rollback"),
            function_name=setting("lambda_function"),
            alias=setting("lambda_alias"),
            start_state=live["alias"],
            left_by=[IDS["canary_shift"], IDS["promote"]],
            aws_conn_id=AWS_CONN_ID,
        )
        reject_rolled_back_model = ModelPackageStatusOperator(
            task_id=task_name("rollback_reject"),
            model_package_arn=register_model.output,
            status="Rejected",
            description=xcom("rollback_check"),
            aws_conn_id=AWS_CONN_ID,
        )
        rollback_needed = check_for_rollback()
        [publish, smoke_test, shift_canary, check_canary, promote_alias] >> rollback_needed
        rollback_needed >> rollback_alias >> reject_rolled_back_model

    with TaskGroup("audit", tooltip="Record what happened", doc_md=step_doc("audit")):

        @task(
            task_id=task_name("audit"),
            trigger_rule=TriggerRule.ALL_DONE,
            on_failure_callback=alerts.on_audit_failure,
        )
        def record_audit(ti=None, dag_run=None, params: dict | None = None) -> dict:
            # Settings read afresh rather than from load_settings, which may be what failed.
            config, s3, sm = aws(load_config().as_dict(), "s3", "sagemaker")
            record = audit.audit_record(ti, dag_run, params, sm)
            earlier = audit.read_audit_if_any(s3, config, record["run"]["run_id"])
            record["alert"] = alerts.alert_once(record, earlier, config, aws_conn_id=AWS_CONN_ID)
            recorded = audit.record_run(s3, config, record, consumed_batches=pull(ti, "consumed"))
            return {**recorded, "error": record["result"]["error"]}

        @task(task_id=task_name("conclude"))
        def conclude_run(outcome: dict) -> str:
            return audit.conclude(outcome)

        audited = record_audit()
        concluded = conclude_run(audited)

    # Every path of the run ends in one of these three, whatever became of it: rejected, deployed
    # (and its batches consumed), or rolled back. The audit waits for all three (all_done), so
    # for every task before them. Not directly for a branch or a short-circuit: those skip every
    # task right after them that was not taken, which would skip the audit too.
    [reject_model, consumed, reject_rolled_back_model] >> audited
