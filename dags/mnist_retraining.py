"""
# mnist_retraining

Nightly retraining of the MNIST digit classifier, from new data to the `live` Lambda alias.

0. **check_live_alias**: where the alias points at the start of the run. Leftover canary weights,
   or a version no Approved model package records, block this run's deployment (the gate says
   why) and that version is not treated as the champion.

1. **data**: find incoming batches no deployed run consumed, validate each (Great Expectations),
   quarantine failures, snapshot exactly what this run trains on. Nothing new and no
   `force_retrain`: the run stops here and its audit record says "nothing_to_do".
2. **train**: one SageMaker training job per run, named after the run, so a retry or a cleared
   task resumes that job instead of starting another; a sensor waits without holding a worker.
3. **evaluate**: score the job's exact `model.onnx` and the live champion on the holdout.
   `dry_run` stops here.
4. **register**: one model package per run, with its metrics and its links to run, job and data.
5. **gate**: accuracy ≥ `min_accuracy` and ≥ champion − `max_regression`; with `require_approval`,
   a person decides too. A rejected model's package is marked Rejected; the alias is untouched.
6. **deploy**: publish a Lambda version, smoke test that version, shift `canary_weight` of the
   alias's traffic to it, check the canary, promote, mark the package Approved.
7. **rollback**: when a step after publishing fails, the alias goes back to the champion (only if
   it is still where this run left it) and the package is marked Rejected; the run then fails.
8. **audit**: `audit/<run>.json` in S3, whatever happened; a deployed run marks its batches
   consumed. `conclude_run` then fails the run if it failed.

Settings: Airflow Variables `mnist_*` or environment `MNIST_*` (see `mnist_pipeline.config`), and
the connection `aws_default`, which alone decides whether this talks to AWS or to localcloud.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.providers.amazon.aws.sensors.sagemaker import SageMakerTrainingSensor
from airflow.sdk import DAG, Param, TaskGroup, task
from airflow.sdk.bases.skipmixin import SkipMixin
from airflow.task.trigger_rule import TriggerRule

from mnist_pipeline import pipeline
from mnist_pipeline.approval import DeploymentApprovalOperator
from mnist_pipeline.config import PipelineConfig, dag_schedule, load_config, training_poke_interval
from mnist_pipeline.lambda_deploy import (
    LambdaAliasRollbackOperator,
    LambdaAliasShiftOperator,
    LambdaCanaryCheckOperator,
    LambdaPublishVersionOperator,
    LambdaSmokeTestOperator,
)
from mnist_pipeline.registry import ModelPackageStatusOperator, RegisterModelPackageOperator
from mnist_pipeline.training import ResumableSageMakerTrainingOperator

AWS_CONN_ID = "aws_default"
IDS = pipeline.TASK_IDS


def xcom(task_id: str, *path: str, key: str = "return_value") -> str:
    """A Jinja template for a value inside what a task returned (for string template fields)."""
    keys = "".join(f"['{name}']" for name in path)
    return "{{ ti.xcom_pull(task_ids='" + task_id + "', key='" + key + "')" + keys + " }}"


def setting(name: str) -> str:
    """A template for one of the run's settings (as ``load_settings`` read them).

    A template rather than an XComArg, so that the operators do not all hang off
    ``load_settings`` in the graph: an upstream that always succeeds would satisfy the trigger
    rule of ``promote_alias`` (none failed, at least one succeeded) in runs that deploy nothing.
    """
    return xcom("load_settings", key=name)


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
}


def clients(*services: str) -> list:
    """boto3 clients through the aws_default connection (AWS or localcloud: the connection decides)."""
    hooks = {"s3": S3Hook, "lambda": LambdaHook, "sagemaker": SageMakerHook}
    return [hooks[service](aws_conn_id=AWS_CONN_ID).conn for service in services]


with DAG(
    dag_id="mnist_retraining",
    description="Nightly MNIST retraining: validate, train, evaluate, gate, deploy to Lambda, audit.",
    doc_md=__doc__,
    schedule=dag_schedule(),
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    params=params,
    tags=["mnist", "sagemaker", "lambda"],
) as dag:

    @task(multiple_outputs=True)
    def load_settings() -> dict:
        """Read and check every setting once, so the whole run uses the same ones."""
        return load_config().as_dict()

    settings = load_settings()

    @task(multiple_outputs=True)
    def check_live_alias(settings: dict) -> dict:
        """Where the alias points now: the champion, and anything that makes moving it unsafe."""
        from mnist_pipeline.lambda_deploy import inspect_live_alias

        lambda_conn, sm = clients("lambda", "sagemaker")
        return inspect_live_alias(lambda_conn, sm, PipelineConfig(**settings))

    live = check_live_alias(settings)

    with TaskGroup(
        "data",
        tooltip="Find, validate and snapshot the data",
        doc_md=(
            "New incoming batches are validated against `data/reference.json`; failures move to "
            "`data/quarantine/<run>/` with their report. The snapshot lists every shard this run "
            "trains on, with sha256s. With nothing new and no `force_retrain` the run stops here."
        ),
    ) as data:

        @task
        def find_new_batches(settings: dict, run_id: str | None = None) -> dict:
            from mnist_pipeline.lake import find_new_batches

            (s3,) = clients("s3")
            return find_new_batches(s3, PipelineConfig(**settings), run_id)

        @task
        def validate_data(settings: dict, discovery: dict, run_id: str | None = None) -> dict:
            (s3,) = clients("s3")
            return pipeline.validate_batches(s3, PipelineConfig(**settings), run_id, discovery["new"])

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def check_for_new_data(checked: dict, params: dict | None = None) -> bool:
            return pipeline.has_work(checked, params["force_retrain"])

        @task(multiple_outputs=True)
        def snapshot_data(settings: dict, checked: dict, run_id: str | None = None) -> dict:
            from mnist_pipeline.lake import write_snapshot

            (s3,) = clients("s3")
            return write_snapshot(s3, PipelineConfig(**settings), run_id, checked["accepted"])

        checked = validate_data(settings, find_new_batches(settings))
        snapshot = snapshot_data(settings, checked)
        check_for_new_data(checked) >> snapshot

    with TaskGroup(
        "train",
        tooltip="Train on SageMaker",
        doc_md=(
            "One training job per run, named after the run: a retry or a cleared task finds the job "
            "and resumes it (a Failed one leads to the next attempt, `-a2`...). The sensor checks "
            "the job in reschedule mode, so waiting holds no worker slot."
        ),
    ) as train:

        @task(multiple_outputs=True)
        def upload_training_code(settings: dict) -> dict:
            from mnist_pipeline.training import upload_source_dir

            (s3,) = clients("s3")
            return upload_source_dir(s3, PipelineConfig(**settings))

        @task
        def configure_training_job(
            settings: dict, snapshot: dict, source: dict, dag_run=None, params: dict | None = None
        ) -> dict:
            return pipeline.training_job_request(
                PipelineConfig(**settings),
                dag_id=dag_run.dag_id,
                run_id=dag_run.run_id,
                snapshot=snapshot,
                source=source,
                params=params,
            )

        source = upload_training_code(settings)
        snapshot >> source
        train_model = ResumableSageMakerTrainingOperator(
            task_id="train_model",
            config=configure_training_job(settings, snapshot, source),
            wait_for_completion=False,
            print_log=False,
            aws_conn_id=AWS_CONN_ID,
            execution_timeout=dt.timedelta(minutes=10),
        )
        wait_for_training = SageMakerTrainingSensor(
            task_id="wait_for_training",
            job_name=xcom(IDS["training"], "Training", "TrainingJobName"),
            print_log=False,
            mode="reschedule",
            poke_interval=training_poke_interval(),
            timeout=dt.timedelta(hours=6).total_seconds(),
            aws_conn_id=AWS_CONN_ID,
            execution_timeout=dt.timedelta(minutes=5),
        )
        train_model >> wait_for_training

    with TaskGroup(
        "evaluate",
        tooltip="Evaluate the model and the champion",
        doc_md=(
            "Downloads the job's `model.tar.gz` (extracted safely), scores the exact `model.onnx` "
            "and the live champion on the holdout, and writes `evaluation.json` and `report.md`. "
            "A `dry_run` ends here."
        ),
    ) as evaluate:

        @task(multiple_outputs=True)
        def evaluate_model(
            settings: dict, started: dict, live: dict, run_id: str | None = None, params: dict | None = None
        ):
            from mnist_pipeline.evaluation import evaluate_run

            s3, sm = clients("s3", "sagemaker")
            job = pipeline.completed_job(sm, started["Training"]["TrainingJobName"])
            return {
                **evaluate_run(
                    s3,
                    PipelineConfig(**settings),
                    live=live,
                    run_id=run_id,
                    training_job=job["TrainingJobName"],
                    model_uri=job["ModelArtifacts"]["S3ModelArtifacts"],
                    min_accuracy=params["min_accuracy"],
                    max_regression=params["max_regression"],
                ),
                "training_image": job["AlgorithmSpecification"]["TrainingImage"],
            }

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def stop_if_dry_run(params: dict | None = None) -> bool:
            return not params["dry_run"]

        evaluation = evaluate_model(settings, train_model.output, live)
        wait_for_training >> evaluation
        not_dry_run = stop_if_dry_run()
        evaluation >> not_dry_run

    with TaskGroup(
        "register",
        tooltip="Register the model package",
        doc_md=(
            "One model package per run (a retry finds it by its run_id metadata), pending approval, "
            "with ModelMetrics pointing at evaluation.json."
        ),
    ) as register:
        register_model = RegisterModelPackageOperator(
            task_id="register_model",
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

    with TaskGroup(
        "gate",
        tooltip="Decide: deploy or reject",
        doc_md=(
            "The metric gate (decided in evaluate: accuracy ≥ min_accuracy and ≥ champion − "
            "max_regression), then, with `require_approval`, a person. Rejected: the package is "
            "marked Rejected and the run ends with the outcome `rejected`; the alias is untouched."
        ),
    ) as gate:
        approve_deployment = DeploymentApprovalOperator(task_id="approve_deployment", evaluation=evaluation)

        # Reads evaluation and approval from XCom: as arguments, a succeeded evaluate_model would
        # satisfy "none failed, one succeeded" in a dry run, when register and approval are skipped.
        @task.branch(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        def quality_gate(ti=None, params: dict | None = None) -> str:
            verdict = pipeline.gate_verdict(
                pipeline.pull(ti, "evaluation"), pipeline.pull(ti, "approval"), params["require_approval"]
            )
            ti.xcom_push(key=pipeline.VERDICT_KEY, value=verdict)
            return "deploy.upload_lambda_package" if verdict["deploy"] else "gate.reject_model"

        reject_model = ModelPackageStatusOperator(
            task_id="reject_model",
            model_package_arn=register_model.output,
            status="Rejected",
            description="{{ ti.xcom_pull(task_ids='gate.quality_gate', key='verdict')['reasons'] | join('; ') }}",
            aws_conn_id=AWS_CONN_ID,
        )
        decision = quality_gate()
        register_model >> approve_deployment
        [register_model, approve_deployment] >> decision >> reject_model

    with TaskGroup(
        "deploy",
        tooltip="Ship to Lambda",
        doc_md=(
            "Builds the deterministic zip (handler + the evaluated model.onnx, checked by sha256 + "
            "model_card.json), publishes a version (unchanged code: no new version) and waits for it "
            "to be Active, smoke tests that version (it must report the evaluated model's sha256), "
            "then moves the alias, only from the state the run last saw it in: `canary_weight` of "
            "the traffic first (0 skips the canary), checked with at least `canary_invocations` "
            "calls of which the new version must answer at least 5, then all of it. The package is "
            "then Approved with its version."
        ),
    ) as deploy:

        @task(multiple_outputs=True)
        def upload_lambda_package(settings: dict, evaluation: dict, run_id: str | None = None) -> dict:
            from mnist_pipeline.lambda_deploy import upload_lambda_package, version_description

            (s3,) = clients("s3")
            package = upload_lambda_package(
                s3, PipelineConfig(**settings), evaluation["model_uri"], evaluation["model_sha256"]
            )
            description = version_description(run_id, evaluation["training_job"], evaluation["accuracy"])
            return {**package, "description": description}

        lambda_zip = upload_lambda_package(settings, evaluation)
        publish = LambdaPublishVersionOperator(
            task_id="publish_lambda_version",
            function_name=setting("lambda_function"),
            s3_bucket=lambda_zip["s3_bucket"],
            s3_key=lambda_zip["s3_key"],
            code_sha256=lambda_zip["code_sha256"],
            description=lambda_zip["description"],
            multiple_outputs=True,
            aws_conn_id=AWS_CONN_ID,
        )
        smoke_test = LambdaSmokeTestOperator(
            task_id="smoke_test",
            function_name=setting("lambda_function"),
            version=publish.output["version"],
            examples_uri=evaluation["examples_uri"],
            min_accuracy="{{ params.min_accuracy }}",
            expected_model_sha256=evaluation["model_sha256"],
            aws_conn_id=AWS_CONN_ID,
        )

        @task.branch
        def choose_rollout(params: dict | None = None) -> str:
            return pipeline.rollout_start(
                params["canary_weight"],
                canary_task="deploy.shift_canary",
                promote_task="deploy.promote_alias",
            )

        shift_canary = LambdaAliasShiftOperator(
            task_id="shift_canary",
            function_name=setting("lambda_function"),
            alias=setting("lambda_alias"),
            version=publish.output["version"],
            weight="{{ params.canary_weight }}",
            previous_steps=[IDS["live_alias"]],
            aws_conn_id=AWS_CONN_ID,
        )
        check_canary = LambdaCanaryCheckOperator(
            task_id="check_canary",
            function_name=setting("lambda_function"),
            alias=setting("lambda_alias"),
            version=publish.output["version"],
            examples_uri=evaluation["examples_uri"],
            invocations="{{ params.canary_invocations }}",
            aws_conn_id=AWS_CONN_ID,
        )
        promote_alias = LambdaAliasShiftOperator(
            task_id="promote_alias",
            function_name=setting("lambda_function"),
            alias=setting("lambda_alias"),
            version=publish.output["version"],
            weight=1.0,
            previous_steps=[IDS["live_alias"], IDS["canary_shift"]],
            trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
            aws_conn_id=AWS_CONN_ID,
        )
        approve_model = ModelPackageStatusOperator(
            task_id="approve_model",
            model_package_arn=register_model.output,
            status="Approved",
            description=f"deployed as {xcom(IDS['publish'], key='function_name')} version "
            + xcom(IDS["publish"], key="version"),
            metadata={
                "lambda_function": setting("lambda_function"),
                "lambda_version": publish.output["version"],
            },
            aws_conn_id=AWS_CONN_ID,
        )
        rollout = choose_rollout()
        decision >> lambda_zip
        publish >> smoke_test >> rollout >> [shift_canary, promote_alias]
        shift_canary >> check_canary >> promote_alias >> approve_model

    with TaskGroup(
        "rollback",
        tooltip="Undo a failed deployment",
        doc_md=(
            "Runs when a step after publishing failed: the alias goes back to the version it had "
            "at the start of the run (deleted if there was none), but only if it is still where "
            "this run left it; a change made elsewhere since fails the task instead of being "
            "reverted. The package is marked Rejected."
        ),
    ) as rollback:

        @task.short_circuit(trigger_rule=TriggerRule.ONE_FAILED, ignore_downstream_trigger_rules=False)
        def check_for_rollback(ti=None, dag_run=None) -> str | None:
            return pipeline.rollback_reason(ti, dag_run)

        rollback_alias = LambdaAliasRollbackOperator(
            task_id="rollback_alias",
            function_name=setting("lambda_function"),
            alias=setting("lambda_alias"),
            start_state=live["alias"],
            left_by=[IDS["canary_shift"], IDS["promote"]],
            aws_conn_id=AWS_CONN_ID,
        )
        reject_rolled_back_model = ModelPackageStatusOperator(
            task_id="reject_rolled_back_model",
            model_package_arn=register_model.output,
            status="Rejected",
            description=xcom("rollback.check_for_rollback"),
            aws_conn_id=AWS_CONN_ID,
        )
        rollback_needed = check_for_rollback()
        [publish, smoke_test, shift_canary, check_canary, promote_alias] >> rollback_needed
        rollback_needed >> rollback_alias >> reject_rolled_back_model

    with TaskGroup(
        "audit",
        tooltip="Record what happened",
        doc_md=(
            "Writes `audit/<run>.json` whatever happened (run, data, training, decision, deployment, "
            "outcome); a deployed run marks its batches consumed. `conclude_run` then fails the run "
            "when its outcome is `failed` or `rolled_back`, with the reason."
        ),
    ) as audit_group:

        @task(trigger_rule=TriggerRule.ALL_DONE)
        def record_audit(ti=None, dag_run=None, params: dict | None = None) -> dict:
            from mnist_pipeline.audit import record_run

            # Settings read afresh rather than from load_settings, which may be what failed.
            config = load_config()
            s3, sm = clients("s3", "sagemaker")
            record = pipeline.audit_record(ti, dag_run, params, sm)
            return {**record_run(s3, config, record), "error": record["result"]["error"]}

        @task
        def conclude_run(outcome: dict) -> str:
            return pipeline.conclude(outcome)

        audited = record_audit()
        concluded = conclude_run(audited)

    # The audit waits for every other task, whatever became of it. Not directly for branches and
    # short-circuits: they skip every task right after them not taken, which would skip the audit
    # too; the tasks after them come later anyway.
    for other in dag.tasks:
        if other not in (audited.operator, concluded.operator) and not isinstance(other, SkipMixin):
            other >> audited.operator
