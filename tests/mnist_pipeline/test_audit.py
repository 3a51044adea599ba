"""The audit record: built from what the tasks returned, written per run, read back for the audit CLI."""

import datetime as dt
import json
from types import SimpleNamespace

import pytest

from mnist_pipeline import audit, data, train
from mnist_pipeline.names import VERDICT_KEY
from tests.fixtures.plugin_aws import put_shard, random_digits
from tests.fixtures.run import DAG_RUN, IDS, PARAMS, FakeSageMaker, FakeTaskInstance, evaluation

UTC = dt.UTC
RUN_ID = "manual__2025-01-03T10:00:00+00:00"


def dag_run(run_id=RUN_ID, run_type="manual", user="alice"):
    return SimpleNamespace(
        dag_id="mnist_retraining",
        run_id=run_id,
        logical_date=dt.datetime(2025, 1, 3, 10, tzinfo=UTC),
        run_after=dt.datetime(2025, 1, 3, 10, tzinfo=UTC),
        start_date=dt.datetime(2025, 1, 3, 10, 0, 5, tzinfo=UTC),
        run_type=SimpleNamespace(value=run_type),
        triggering_user_name=user,
        conf={"epochs": 1},
    )


TRAINING_JOB = {
    "TrainingJobName": "mnist-retraining-manual-2025-01-03T10-00-00-1a2b3c4d",
    "TrainingJobStatus": "Completed",
    "SecondaryStatus": "Completed",
    "CreationTime": dt.datetime(2025, 1, 3, 10, 1, tzinfo=UTC),
    "TrainingStartTime": dt.datetime(2025, 1, 3, 10, 2, tzinfo=UTC),
    "TrainingEndTime": dt.datetime(2025, 1, 3, 10, 4, 30, tzinfo=UTC),
    "BillableTimeInSeconds": 151,
    "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
    "EnableManagedSpotTraining": False,
    "HyperParameters": {"epochs": "1"},
    "FinalMetricDataList": [
        {
            "MetricName": "test:accuracy",
            "Value": 0.9921,
            "Timestamp": dt.datetime(2025, 1, 3, 10, 4, tzinfo=UTC),
        }
    ],
    "ModelArtifacts": {"S3ModelArtifacts": "s3://b/training/job/output/model.tar.gz"},
}

EVALUATION = {
    "evaluation_uri": "s3://b/evaluations/run/evaluation.json",
    "report_uri": "s3://b/evaluations/run/report.md",
    "candidate": {"accuracy": 0.9921, "latency_ms": {"p50": 0.07, "p99": 0.2}, "model_sha256": "ab" * 32},
    "champion": {"lambda_version": "3", "model_package_arn": "arn:pkg/3", "metrics": {"accuracy": 0.9910}},
    "gate": {
        "approved": True,
        "reasons": ["accuracy 0.9921 >= min_accuracy 0.9900", "accuracy 0.9921 >= champion 0.9910 - ..."],
        "min_accuracy": 0.99,
        "max_regression": 0.002,
    },
}

SHIFTS = [
    {
        "version": "4",
        "weight": 0.1,
        "changed": True,
        "before": {"exists": True, "version": "3", "weights": {}},
        "after": {"exists": True, "version": "3", "weights": {"4": 0.1}},
    },
    {
        "version": "4",
        "weight": 1.0,
        "changed": True,
        "before": {"exists": True, "version": "3", "weights": {"4": 0.1}},
        "after": {"exists": True, "version": "4", "weights": {}},
    },
]


def full_record(outcome="deployed", run_id=RUN_ID, written_at=dt.datetime(2025, 1, 3, 10, 10, tzinfo=UTC)):
    return audit.build_audit_record(
        run=audit.run_section(dag_run(run_id), {"min_accuracy": 0.99, "dry_run": False}),
        data=audit.data_section(
            {"new": ["data/incoming/batch-0002.npz", "data/incoming/batch-0003.npz"]},
            {
                "accepted": [
                    {
                        "key": "data/incoming/batch-0002.npz",
                        "uri": "s3://...",
                        "sha256": "cd" * 32,
                        "rows": 20,
                    }
                ],
                "quarantined": [
                    {
                        "key": "data/incoming/batch-0003.npz",
                        "quarantine_key": "data/quarantine/run/batch-0003.npz",
                        "report_key": "data/quarantine/run/batch-0003.report.json",
                        "reasons": ["class_proportions: observed 1.0, expected '<= 0.5'"],
                    }
                ],
            },
            {
                "sha256": "ef" * 32,
                "rows": 140,
                "shards": 4,
                "manifest_uri": "s3://b/snapshots/run/manifest.json",
            },
        ),
        training=audit.training_section(TRAINING_JOB),
        decision=audit.decision_section(EVALUATION, "arn:pkg/4", "Approved"),
        deployment=audit.deployment_section(
            {"version": "4", "code_sha256": "abc=", "created": True},
            {"accuracy": 1.0},
            SHIFTS,
            {"invocations": 20},
        ),
        result=audit.result_section(outcome),
        written_at=written_at,
    )


def test_the_record_answers_who_what_which_and_why():
    record = full_record()
    json.dumps(record, allow_nan=False)  # storable as is

    assert record["run"]["trigger"] == {"type": "manual", "by": "alice"}
    assert record["run"]["logical_date"] == "2025-01-03T10:00:00+00:00"
    assert record["run"]["params"] == {"min_accuracy": 0.99, "dry_run": False}
    assert record["data"]["quarantined"][0]["reasons"] == [
        "class_proportions: observed 1.0, expected '<= 0.5'"
    ]
    assert record["data"]["snapshot"]["sha256"] == "ef" * 32
    training = record["training"]
    assert training["duration_seconds"] == 150 and training["billable_seconds"] == 151
    assert training["metrics"] == {"test:accuracy": 0.9921}
    assert training["started"] == "2025-01-03T10:02:00+00:00"
    decision = record["decision"]
    assert decision["champion"] == {
        "lambda_version": "3",
        "model_package_arn": "arn:pkg/3",
        "accuracy": 0.9910,
    }
    assert decision["gate"]["approved"] is True and len(decision["gate"]["reasons"]) == 2
    assert decision["model_package"] == {"arn": "arn:pkg/4", "status": "Approved"}
    deployment = record["deployment"]
    assert deployment["lambda_version"] == "4"
    assert deployment["alias_before"]["version"] == "3"
    assert deployment["alias_after"] == {"exists": True, "version": "4", "weights": {}}


def test_a_scheduled_run_is_attributed_to_the_scheduler():
    run = audit.run_section(dag_run("scheduled__2025-01-03T02:00:00+00:00", "scheduled", None))
    assert run["trigger"] == {"type": "scheduled", "by": "scheduler"}


def test_a_rollback_shows_where_the_alias_ended():
    rollback = {"after": {"exists": True, "version": "3", "weights": {}}, "changed": True}
    deployment = audit.deployment_section({"version": "4"}, None, SHIFTS[:1], None, rollback)
    assert deployment["alias_before"]["version"] == "3"
    assert deployment["alias_after"] == {"exists": True, "version": "3", "weights": {}}


def test_sections_of_tasks_that_did_not_run_are_null():
    record = audit.build_audit_record(
        run=audit.run_section(dag_run()), result=audit.result_section("nothing_to_do")
    )
    assert [record[name] for name in ("data", "training", "decision", "deployment")] == [None] * 4
    assert audit.training_section(None) is None


@pytest.mark.parametrize(
    ("facts", "outcome"),
    [
        ({"failed_tasks": ["wait_for_training"]}, "failed"),
        ({"failed_tasks": ["canary_check"], "rolled_back": True}, "rolled_back"),
        ({"nothing_to_do": True}, "nothing_to_do"),
        ({"approved": False}, "rejected"),
        ({"approved": False, "dry_run": True}, "rejected"),
        ({"approved": True, "dry_run": True}, "dry_run"),
        ({"approved": True}, "deployed"),
    ],
)
def test_the_outcome_follows_from_what_happened(facts, outcome):
    assert audit.decide_outcome(**facts) == outcome


def test_an_unknown_outcome_is_refused():
    with pytest.raises(ValueError, match="outcome must be one of"):
        audit.result_section("succeeded")


# --- storage (moto) -----------------------------------------------------------------------------------


@pytest.fixture
def snapshotted_run(s3, pipeline_config):
    """A run whose snapshot took batch-0002: what the audit step finds at the end of a run."""
    put_shard(s3, pipeline_config.bucket, "data/base/base-00000.npz", *random_digits(0, 30))
    put_shard(s3, pipeline_config.bucket, "data/incoming/batch-0002.npz", *random_digits(2, 20))
    checked = data.check_batches(
        s3, pipeline_config, RUN_ID, ["data/incoming/batch-0002.npz"], lambda *_: {"success": True}
    )
    data.write_snapshot(s3, pipeline_config, RUN_ID, checked["accepted"])


def test_a_deployed_run_consumes_its_batches_and_its_record_says_which(s3, pipeline_config, snapshotted_run):
    consumed = data.mark_consumed(s3, pipeline_config, RUN_ID)  # the mark_batches_consumed task
    result = audit.record_run(s3, pipeline_config, full_record("deployed"), consumed)

    assert result["consumed_batches"] == ["data/incoming/batch-0002.npz"]
    assert result["audit_uri"] == pipeline_config.s3_uri(pipeline_config.audit_key(RUN_ID))
    stored = audit.read_audit(s3, pipeline_config, RUN_ID)
    assert stored["run"]["run_id"] == RUN_ID  # the raw id, though the key is made safe
    assert stored["result"]["consumed_batches"] == ["data/incoming/batch-0002.npz"]
    assert data.find_new_batches(s3, pipeline_config)["new"] == []


def test_a_rejected_run_is_recorded_and_consumes_nothing(s3, pipeline_config, snapshotted_run):
    result = audit.record_run(s3, pipeline_config, full_record("rejected"))  # mark_batches_consumed skipped
    assert result["consumed_batches"] == []
    assert data.find_new_batches(s3, pipeline_config)["new"] == ["data/incoming/batch-0002.npz"]


def test_the_record_is_written_even_when_marking_batches_fails(s3, pipeline_config):
    with pytest.raises(FileNotFoundError, match="manifest.json does not exist"):
        data.mark_consumed(s3, pipeline_config, RUN_ID)  # this run has no snapshot: the task fails
    record = full_record("failed")
    record["result"]["failed_tasks"] = [IDS["consumed"]]
    audit.record_run(s3, pipeline_config, record)
    stored = audit.read_audit(s3, pipeline_config, RUN_ID)
    assert stored["result"]["failed_tasks"] == [IDS["consumed"]]
    assert stored["result"]["consumed_batches"] == []


def test_audits_are_listed_newest_first_with_a_summary(s3, pipeline_config):
    for day, outcome in ((1, "rejected"), (2, "deployed")):
        record = full_record(
            outcome,
            run_id=f"scheduled__2025-01-0{day}T02:00:00+00:00",
            written_at=dt.datetime(2025, 1, day, 3, tzinfo=UTC),
        )
        audit.write_audit(s3, pipeline_config, record)

    summaries = audit.list_audits(s3, pipeline_config)

    assert [(summary["run_id"], summary["outcome"]) for summary in summaries] == [
        ("scheduled__2025-01-02T02:00:00+00:00", "deployed"),
        ("scheduled__2025-01-01T02:00:00+00:00", "rejected"),
    ]
    assert summaries[0]["lambda_version"] == "4" and summaries[0]["accuracy"] == 0.9921
    assert summaries[0]["trigger"] == {"type": "manual", "by": "alice"}
    assert len(audit.list_audits(s3, pipeline_config, limit=1)) == 1


# --- the run's record, from its tasks -----------------------------------------------------------


def test_audit_of_a_night_without_new_data():
    ti = FakeTaskInstance(
        xcoms={
            (IDS["discovery"], "return_value"): {"new": [], "consumed": ["b1"], "ignored": []},
            (IDS["validation"], "return_value"): {"accepted": [], "quarantined": []},
        },
        states={IDS["discovery"]: "success", IDS["snapshot"]: "skipped", IDS["training"]: "skipped"},
    )
    record = audit.audit_record(ti, DAG_RUN, PARAMS, FakeSageMaker())
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
            (IDS["gate"], VERDICT_KEY): {
                "deploy": False,
                "reasons": ["accuracy 0.9500 < min_accuracy"],
            },
        },
        states={IDS["gate"]: "success", "gate.reject_model": "success", IDS["publish"]: "skipped"},
    )
    record = audit.audit_record(ti, DAG_RUN, PARAMS, FakeSageMaker(job, package_status="Rejected"))
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
    record = audit.audit_record(ti, DAG_RUN, PARAMS, FakeSageMaker(job))
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
            (IDS["gate"], VERDICT_KEY): {"deploy": True, "reasons": []},
            (IDS["publish"], "return_value"): {"version": "5", "code_sha256": "c", "created": True},
            (IDS["rollback"], "return_value"): {"alias": "live", "version": "4", "after": {"version": "4"}},
        },
        states={IDS["smoke_test"]: "failed", IDS["rollback"]: "success"},
    )
    record = audit.audit_record(ti, DAG_RUN, PARAMS, FakeSageMaker())
    assert record["result"]["outcome"] == "rolled_back"
    assert "alias live restored to version 4" in record["result"]["error"]
    assert record["deployment"]["lambda_version"] == "5"
    assert record["deployment"]["alias_after"] == {"version": "4"}


def test_conclusion_fails_the_run_only_for_failures():
    assert audit.conclude({"outcome": "rejected", "audit_uri": "s3://b/audit/r.json"}) == "rejected"
    with pytest.raises(train.RunFailed, match="rolled_back: failed tasks: deploy.smoke_test"):
        audit.conclude(
            {"outcome": "rolled_back", "audit_uri": "s3://b/a", "error": "failed tasks: deploy.smoke_test"}
        )


def test_a_run_started_by_data_says_asset_and_the_keys_its_events_named():
    from mnist_pipeline.audit import trigger_section

    run = {"trigger": {"type": "asset_triggered", "by": None}}
    discovery = {"events": {"object_keys": ["data/incoming/batch-0002.npz"], "messages_deleted": 1}}
    assert trigger_section(run, discovery, {"drift": False}, new_batches=True, forced=False) == {
        "kind": "asset",
        "object_keys": ["data/incoming/batch-0002.npz"],
        "drift_triggered": False,
    }


def test_drift_alone_making_a_run_train_is_drift_triggered():
    from mnist_pipeline.audit import trigger_section

    nightly = {"trigger": {"type": "scheduled", "by": "scheduler"}}
    assert trigger_section(nightly, {}, {"drift": True}, new_batches=False, forced=False)["drift_triggered"]
    assert not trigger_section(nightly, {}, {"drift": True}, new_batches=True, forced=False)[
        "drift_triggered"
    ]
    assert trigger_section(nightly, None, None, new_batches=False, forced=False) == {
        "kind": "schedule",
        "object_keys": [],
        "drift_triggered": False,
    }
