"""The DAG's decisions and glue (mnist_pipeline.pipeline, .approval, parse-time config), without a scheduler."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException

from mnist_pipeline import pipeline
from mnist_pipeline.approval import DeploymentApprovalOperator, approval_body
from mnist_pipeline.config import (
    ConfigError,
    PipelineConfig,
    dag_schedule,
    training_poke_interval,
)

IDS = pipeline.TASK_IDS
RUN_ID = "scheduled__2026-01-01T02:00:00+00:00"
CONFIG = PipelineConfig(
    bucket="mnist-pipeline-test",
    region="eu-west-1",
    sagemaker_role_arn="arn:aws:iam::123456789012:role/mnist-sagemaker",
    training_image_uri="123456789012.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.6-cpu-py312",
)
PARAMS = {
    "epochs": 2,
    "learning_rate": 0.002,
    "batch_size": 64,
    "min_accuracy": 0.99,
    "max_regression": 0.002,
    "require_approval": False,
    "force_retrain": False,
    "dry_run": False,
    "instance_type": None,
    "use_spot": False,
    "max_train_samples": 0,
}


def evaluation(approved: bool, accuracy: float = 0.993, champion_version: str | None = "4") -> dict:
    return {
        "run_id": RUN_ID,
        "training_job": "mnist-retraining-job",
        "holdout": {"rows": 10000},
        "candidate": {"accuracy": accuracy, "latency_ms": {"p50": 0.1}, "model_sha256": "ab" * 32},
        "champion": {
            "lambda_version": champion_version,
            "model_package_arn": "arn:pkg/4",
            "metrics": {"accuracy": 0.991},
        },
        "gate": {
            "approved": approved,
            "reasons": [f"accuracy {accuracy:.4f} {'>=' if approved else '<'} min_accuracy 0.9900"],
            "min_accuracy": 0.99,
            "max_regression": 0.002,
        },
        "evaluation_uri": "s3://bucket/evaluations/run/evaluation.json",
        "report_uri": "s3://bucket/evaluations/run/report.md",
        "accuracy": accuracy,
        "champion_version": champion_version,
    }


class FakeTaskInstance:
    """What a running task instance offers the tasks that look back: XComs and task states."""

    def __init__(self, xcoms: dict | None = None, states: dict | None = None):
        self.xcoms, self.states = xcoms or {}, states or {}

    def xcom_pull(self, task_ids: str, key: str = "return_value"):
        return self.xcoms.get((task_ids, key))

    def get_task_states(self, dag_id: str, run_ids: list[str]):
        assert dag_id == "mnist_retraining"
        return {run_ids[0]: dict(self.states)}


class FakeSageMaker:
    def __init__(self, job: dict | None = None, package_status: str = "PendingManualApproval"):
        self.job, self.package_status = job, package_status

    def describe_training_job(self, TrainingJobName: str):
        return {**self.job, "TrainingJobName": TrainingJobName}

    def describe_model_package(self, ModelPackageName: str):
        return {"ModelPackageArn": ModelPackageName, "ModelApprovalStatus": self.package_status}


DAG_RUN = SimpleNamespace(
    dag_id="mnist_retraining",
    run_id=RUN_ID,
    logical_date=dt.datetime(2026, 1, 1, 2, tzinfo=dt.UTC),
    run_type="scheduled",
    conf={},
)


# --- data and training ---------------------------------------------------------------------------


def test_work_means_an_accepted_batch_or_a_forced_retrain():
    assert pipeline.has_work({"accepted": [{"key": "b1"}]}, force_retrain=False) is True
    assert pipeline.has_work({"accepted": []}, force_retrain=True) is True
    assert pipeline.has_work({"accepted": [], "quarantined": [{"key": "b2"}]}, force_retrain=False) is False


def test_hyperparameters_use_the_training_script_names_and_skip_an_unset_sample_size():
    assert pipeline.hyperparameters(PARAMS) == {"epochs": 2, "lr": 0.002, "batch-size": 64}
    assert pipeline.hyperparameters({**PARAMS, "max_train_samples": 500})["max-train-samples"] == 500


def test_training_job_request_is_named_after_the_run_and_tagged_with_it():
    snapshot = {
        "train_manifest_uri": "s3://mnist-pipeline-test/snapshots/r/train.manifest",
        "sha256": "5" * 64,
    }
    source = {"uri": "s3://mnist-pipeline-test/code/sourcedir-1.tar.gz", "sha256": "1" * 64}
    request = pipeline.training_job_request(
        CONFIG, dag_id="mnist_retraining", run_id=RUN_ID, snapshot=snapshot, source=source, params=PARAMS
    )
    again = pipeline.training_job_request(
        CONFIG, dag_id="mnist_retraining", run_id=RUN_ID, snapshot=snapshot, source=source, params=PARAMS
    )
    assert request["TrainingJobName"] == again["TrainingJobName"]
    assert request["TrainingJobName"].startswith("mnist-retraining-scheduled-2026-01-01")
    tags = {tag["Key"]: tag["Value"] for tag in request["Tags"]}
    assert tags["snapshot_sha256"] == "5" * 64 and tags["dag_id"] == "mnist_retraining"
    assert request["ResourceConfig"]["InstanceType"] == CONFIG.instance_type
    assert request["HyperParameters"]["epochs"] == "2"
    assert "EnableManagedSpotTraining" not in request


def test_training_job_request_takes_instance_type_and_spot_from_the_run():
    snapshot = {"train_manifest_uri": "s3://b/snapshots/r/train.manifest", "sha256": "5" * 64}
    source = {"uri": "s3://b/code/sourcedir-1.tar.gz", "sha256": "1" * 64}
    request = pipeline.training_job_request(
        CONFIG,
        dag_id="mnist_retraining",
        run_id=RUN_ID,
        snapshot=snapshot,
        source=source,
        params={**PARAMS, "instance_type": "ml.g5.xlarge", "use_spot": True},
    )
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"]["S3Uri"] == CONFIG.checkpoint_uri(request["TrainingJobName"])


def test_a_job_without_a_model_is_not_evaluated_and_the_error_says_why():
    sm = FakeSageMaker({"TrainingJobStatus": "Failed", "FailureReason": "labels must be digits 0..9"})
    with pytest.raises(pipeline.RunFailed, match="job-1 is Failed.*labels must be digits"):
        pipeline.completed_job(sm, "job-1")
    assert issubclass(pipeline.RunFailed, AirflowFailException)  # retrying cannot help


# --- the gate --------------------------------------------------------------------------------------


def test_approval_is_asked_only_for_an_approved_model_in_a_run_that_wants_it():
    wanted = {**PARAMS, "require_approval": True}
    assert pipeline.approval_wanted(wanted, evaluation(approved=True)) is None
    assert "require_approval is off" in pipeline.approval_wanted(PARAMS, evaluation(approved=True))
    assert "dry run" in pipeline.approval_wanted({**wanted, "dry_run": True}, evaluation(approved=True))
    assert "metric gate rejected" in pipeline.approval_wanted(wanted, evaluation(approved=False))


def test_gate_verdict_follows_the_metrics_without_approval():
    assert pipeline.gate_verdict(evaluation(approved=True), None, require_approval=False)["deploy"] is True
    rejected = pipeline.gate_verdict(evaluation(approved=False, accuracy=0.95), None, require_approval=False)
    assert rejected["deploy"] is False
    assert rejected["reasons"] == ["accuracy 0.9500 < min_accuracy 0.9900"]


def test_gate_verdict_needs_the_person_to_approve_when_asked():
    approved = {"chosen_options": ["Approve"], "responded_by_user": {"id": "7", "name": "ana"}}
    rejected = {"chosen_options": ["Reject"], "responded_by_user": {"id": "8", "name": "bo"}}
    verdict = pipeline.gate_verdict(evaluation(approved=True), approved, require_approval=True)
    assert verdict["deploy"] is True and verdict["reasons"][-1] == "approved by ana"
    verdict = pipeline.gate_verdict(evaluation(approved=True), rejected, require_approval=True)
    assert verdict["deploy"] is False and verdict["reasons"][-1] == "rejected by bo"
    verdict = pipeline.gate_verdict(evaluation(approved=True), None, require_approval=True)
    assert verdict["deploy"] is False and "not given" in verdict["reasons"][-1]


def test_rollout_starts_with_the_canary_only_when_it_gets_traffic():
    route = {"canary_task": "deploy.shift_canary", "promote_task": "deploy.promote_alias"}
    assert pipeline.rollout_start(0.1, **route) == "deploy.shift_canary"
    assert pipeline.rollout_start(0, **route) == "deploy.promote_alias"


def test_approval_operator_skips_itself_when_no_approval_is_needed():
    operator = DeploymentApprovalOperator(task_id="approve_deployment", evaluation=evaluation(approved=True))
    assert operator.defaults == ["Reject"]  # no answer in time: nothing ships unseen
    assert operator.response_timeout == dt.timedelta(hours=24)
    with pytest.raises(AirflowSkipException, match="require_approval is off"):
        operator.execute({"params": PARAMS})


def test_approval_question_shows_the_numbers_behind_the_decision():
    body = approval_body(evaluation(approved=True, accuracy=0.9931))
    assert "0.9931" in body and "0.9910" in body
    assert "s3://bucket/evaluations/run/report.md" in body


# --- rollback and audit ------------------------------------------------------------------------------


def test_nothing_is_rolled_back_when_no_version_was_published():
    ti = FakeTaskInstance(states={IDS["publish"]: "failed", IDS["smoke_test"]: "upstream_failed"})
    assert pipeline.rollback_reason(ti, DAG_RUN) is None


def test_a_failure_after_publishing_is_rolled_back_naming_the_step():
    ti = FakeTaskInstance(
        xcoms={(IDS["publish"], "return_value"): {"version": "5"}},
        states={IDS["publish"]: "success", IDS["smoke_test"]: "success", IDS["canary_check"]: "failed"},
    )
    assert pipeline.rollback_reason(ti, DAG_RUN) == "version 5 rolled back after deploy.check_canary failed"


def test_audit_of_a_night_without_new_data():
    ti = FakeTaskInstance(
        xcoms={
            (IDS["discovery"], "return_value"): {"new": [], "consumed": ["b1"], "ignored": []},
            (IDS["validation"], "return_value"): {"accepted": [], "quarantined": []},
        },
        states={IDS["discovery"]: "success", IDS["snapshot"]: "skipped", IDS["training"]: "skipped"},
    )
    record = pipeline.audit_record(ti, DAG_RUN, PARAMS, FakeSageMaker())
    assert record["result"]["outcome"] == "nothing_to_do"
    assert record["training"] is None and record["decision"] is None
    assert record["run"]["trigger"] == {"type": "scheduled", "by": "scheduler"}


def test_audit_of_a_rejected_model_records_the_gate_and_the_package():
    job = {
        "TrainingJobStatus": "Completed",
        "FinalMetricDataList": [{"MetricName": "test:accuracy", "Value": 0.95}],
    }
    ti = FakeTaskInstance(
        xcoms={
            (IDS["validation"], "return_value"): {
                "accepted": [{"key": "b2", "sha256": "x", "rows": 10}],
                "quarantined": [],
            },
            (IDS["training"], "return_value"): {"Training": {"TrainingJobName": "job-2"}},
            (IDS["evaluation"], "return_value"): evaluation(approved=False, accuracy=0.95),
            (IDS["registration"], "return_value"): "arn:pkg/5",
            (IDS["gate"], pipeline.VERDICT_KEY): {
                "deploy": False,
                "reasons": ["accuracy 0.9500 < min_accuracy"],
            },
        },
        states={IDS["gate"]: "success", "gate.reject_model": "success", IDS["publish"]: "skipped"},
    )
    record = pipeline.audit_record(ti, DAG_RUN, PARAMS, FakeSageMaker(job, package_status="Rejected"))
    assert record["result"] == {"outcome": "rejected", "failed_tasks": [], "error": None}
    assert record["decision"]["model_package"] == {"arn": "arn:pkg/5", "status": "Rejected"}
    assert record["training"]["metrics"] == {"test:accuracy": 0.95}
    assert record["deployment"] is None


def test_audit_of_a_failed_training_job_carries_its_failure_reason():
    job = {
        "TrainingJobStatus": "Failed",
        "FailureReason": "AlgorithmError: holdout-corrupt.npz is not a shard",
    }
    ti = FakeTaskInstance(
        xcoms={
            (IDS["validation"], "return_value"): {
                "accepted": [{"key": "b3", "sha256": "x", "rows": 10}],
                "quarantined": [],
            },
            (IDS["training"], "return_value"): {"Training": {"TrainingJobName": "job-3"}},
        },
        states={
            IDS["training"]: "success",
            "train.wait_for_training": "failed",
            IDS["evaluation"]: "upstream_failed",
        },
    )
    record = pipeline.audit_record(ti, DAG_RUN, PARAMS, FakeSageMaker(job))
    assert record["result"]["outcome"] == "failed"
    assert record["result"]["failed_tasks"] == ["train.wait_for_training"]
    assert "job-3 Failed: AlgorithmError: holdout-corrupt.npz" in record["result"]["error"]


def test_audit_of_a_rolled_back_deployment():
    ti = FakeTaskInstance(
        xcoms={
            (IDS["validation"], "return_value"): {
                "accepted": [{"key": "b4", "sha256": "x", "rows": 10}],
                "quarantined": [],
            },
            (IDS["evaluation"], "return_value"): evaluation(approved=True),
            (IDS["gate"], pipeline.VERDICT_KEY): {"deploy": True, "reasons": []},
            (IDS["publish"], "return_value"): {"version": "5", "code_sha256": "c", "created": True},
            (IDS["rollback"], "return_value"): {"alias": "live", "version": "4", "after": {"version": "4"}},
        },
        states={IDS["smoke_test"]: "failed", IDS["rollback"]: "success"},
    )
    record = pipeline.audit_record(ti, DAG_RUN, PARAMS, FakeSageMaker())
    assert record["result"]["outcome"] == "rolled_back"
    assert "alias live restored to version 4" in record["result"]["error"]
    assert record["deployment"]["lambda_version"] == "5"
    assert record["deployment"]["alias_after"] == {"version": "4"}


def test_conclusion_fails_the_run_only_for_failures():
    assert pipeline.conclude({"outcome": "rejected", "audit_uri": "s3://b/audit/r.json"}) == "rejected"
    with pytest.raises(pipeline.RunFailed, match="rolled_back: failed tasks: deploy.smoke_test"):
        pipeline.conclude(
            {"outcome": "rolled_back", "audit_uri": "s3://b/a", "error": "failed tasks: deploy.smoke_test"}
        )


# --- parse-time settings ----------------------------------------------------------------------------


def test_schedule_comes_from_the_environment_at_parse_time():
    assert dag_schedule({}) == "0 2 * * *"
    assert dag_schedule({"MNIST_SCHEDULE": "30 3 * * *"}) == "30 3 * * *"
    assert dag_schedule({"AIRFLOW_VAR_MNIST_SCHEDULE": "@daily", "MNIST_SCHEDULE": "30 3 * * *"}) == "@daily"
    with pytest.raises(ConfigError, match="mnist_schedule.*'every night'"):
        dag_schedule({"MNIST_SCHEDULE": "every night"})


def test_training_poke_interval_is_whole_seconds():
    assert training_poke_interval({}) == 60
    assert training_poke_interval({"MNIST_TRAINING_POKE_INTERVAL": "5"}) == 5
    with pytest.raises(ConfigError, match="MNIST_TRAINING_POKE_INTERVAL.*'0'"):
        training_poke_interval({"MNIST_TRAINING_POKE_INTERVAL": "0"})
