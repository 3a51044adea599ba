"""The audit of past runs: the CLI and the Airflow UI plugin show the same rows, read from a localcloud.

Four runs are audited with :mod:`mnist_pipeline.audit`'s builders, as the DAG's audit task writes
them, and registered in localcloud's model registry; the deployed run's package is then rejected
by a person, which both views must show (the registry's status now, and what it was at the run).
The two oldest records predate the trigger, monitoring and alert sections (they lack them); the
two newest have them, and their evaluations (evaluation.json, report.md) are in the bucket, as the
evaluate step writes them: the page draws their confusion matrices and links to their reports.
"""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mnist_pipeline import audit, audit_view, s3io
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.evaluate import classification_metrics, render_report
from mnist_pipeline.sagemaker_hook import set_package_status
from tests.fixtures.localcloud import use_as_aws_default

REPO = Path(__file__).resolve().parents[2]
ROLE_ARN = "arn:aws:iam::123456789012:role/mnist-sagemaker"
AIRFLOW_URL = "http://airflow.test:8080"
UTC = dt.UTC

SCHEDULED = "scheduled__2025-01-02T02:00:00+00:00"
MANUAL = "manual__2025-01-03T10:00:00+00:00"
QUIET = "scheduled__2025-01-04T02:00:00+00:00"
ASSET = "asset_triggered__2025-01-05T03:00:00+00:00"
ASSET_KEYS = ["data/incoming/batch-0003.npz", "data/incoming/batch-0004.npz"]


def dag_run(run_id, run_type, user, when):
    return SimpleNamespace(
        dag_id="mnist_retraining",
        run_id=run_id,
        logical_date=when,
        run_after=when,
        start_date=when,
        run_type=SimpleNamespace(value=run_type),
        triggering_user_name=user,
        conf={},
    )


def training_job(name, seconds):
    start = dt.datetime(2025, 1, 2, 2, 1, tzinfo=UTC)
    return {
        "TrainingJobName": name,
        "TrainingJobStatus": "Completed",
        "TrainingStartTime": start,
        "TrainingEndTime": start + dt.timedelta(seconds=seconds),
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
    }


def evaluation(accuracy, champion, approved, reasons):
    return {
        "candidate": {"accuracy": accuracy},
        "champion": None if champion is None else {"lambda_version": "1", "metrics": {"accuracy": champion}},
        "gate": {"approved": approved, "reasons": reasons, "min_accuracy": 0.97, "max_regression": 0.002},
    }


def write_evaluation(s3, config, run_id, *, wrong):
    """evaluation.json and report.md as the evaluate step writes them: 100 holdout digits, of which
    ``wrong`` 3s are read as 8s. Returns the evaluation with its URIs, as the step returns it."""
    labels = np.repeat(np.arange(10), 10)
    predictions = labels.copy()
    predictions[30 : 30 + wrong] = 8
    candidate = classification_metrics(labels, predictions) | {
        "latency_ms": {"p50": 0.2, "p99": 0.4, "samples": 100},
        "model_sha256": "cd" * 32,
    }
    document = {
        "run_id": run_id,
        "training_job": f"mnist-retraining-{run_id[:6]}",
        "model_uri": f"s3://{config.bucket}/models/{run_id[:6]}/model.tar.gz",
        "holdout": {"rows": 100, "shards": []},
        "candidate": candidate,
        "champion": None,
        "gate": {"approved": True, "reasons": ["no champion"], "min_accuracy": 0.9, "max_regression": 0.002},
    }
    prefix = config.evaluation_prefix(run_id)
    return document | {
        "evaluation_uri": s3io.put_json(s3, config.bucket, prefix + "evaluation.json", document),
        "report_uri": s3io.put_bytes(
            s3, config.bucket, prefix + "report.md", render_report(document).encode()
        ),
    }


def with_sections(record, **sections):
    """The record with the sections audits written since monitoring and alerts carry."""
    return record | sections


def register(sm, group, run_id, status):
    arn = sm.create_model_package(
        ModelPackageGroupName=group,
        InferenceSpecification={
            "Containers": [{"Image": "pytorch-training:2.6", "ModelDataUrl": "s3://b/model.tar.gz"}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        CustomerMetadataProperties={"run_id": run_id},
    )["ModelPackageArn"]
    set_package_status(sm, arn, status, f"{run_id}: {status}")
    return arn


@pytest.fixture
def history(localcloud):
    """A bucket with three audited runs, oldest first: deployed, rejected, nothing to do."""
    config = PipelineConfig(
        bucket="mnist-audit-view", region=localcloud.config.region, sagemaker_role_arn=ROLE_ARN
    )
    s3, sm = localcloud.client("s3"), localcloud.client("sagemaker")
    s3.create_bucket(Bucket=config.bucket)
    sm.create_model_package_group(ModelPackageGroupName=config.model_package_group)

    deployed_package = register(sm, config.model_package_group, SCHEDULED, "Approved")
    deployed = audit.build_audit_record(
        run=audit.run_section(dag_run(SCHEDULED, "scheduled", None, dt.datetime(2025, 1, 2, 2, tzinfo=UTC))),
        data=audit.data_section(
            {"new": ["data/incoming/batch-0001.npz", "data/incoming/batch-0002.npz"]},
            {
                "accepted": [{"key": "data/incoming/batch-0001.npz", "sha256": "ab" * 32, "rows": 1000}],
                "quarantined": [
                    {"key": "data/incoming/batch-0002.npz", "reasons": ["labels: 12 values outside 0..9"]}
                ],
            },
        ),
        training=audit.training_section(training_job("mnist-retraining-scheduled-0102", 125)),
        decision=audit.decision_section(
            evaluation(0.9912, 0.9890, True, ["accuracy 0.9912 >= min_accuracy 0.9700"]),
            deployed_package,
            "Approved",
        ),
        deployment=audit.deployment_section(
            publish={"version": "2"},
            alias_shifts=[
                {
                    "version": "2",
                    "weight": 0.1,
                    "before": {"exists": True, "version": "1", "weights": {}},
                    "after": {"exists": True, "version": "1", "weights": {"2": 0.1}},
                },
                {
                    "version": "2",
                    "weight": 1.0,
                    "before": {"exists": True, "version": "1", "weights": {"2": 0.1}},
                    "after": {"exists": True, "version": "2", "weights": {}},
                },
            ],
        ),
        result=audit.result_section("deployed"),
        written_at=dt.datetime(2025, 1, 2, 2, 30, tzinfo=UTC),
    )
    rejected_package = register(sm, config.model_package_group, MANUAL, "Rejected")
    rejected = audit.build_audit_record(
        run=audit.run_section(dag_run(MANUAL, "manual", "alice", dt.datetime(2025, 1, 3, 10, tzinfo=UTC))),
        data=audit.data_section({"new": []}, {"accepted": [], "quarantined": []}),
        training=audit.training_section(training_job("mnist-retraining-manual-0103", 48)),
        decision=audit.decision_section(
            evaluation(0.9501, 0.9912, False, ["accuracy 0.9501 < min_accuracy 0.9700"]),
            rejected_package,
            "Rejected",
        ),
        result=audit.result_section("rejected"),
        written_at=dt.datetime(2025, 1, 3, 10, 20, tzinfo=UTC),
    )
    quiet = with_sections(
        audit.build_audit_record(
            run=audit.run_section(dag_run(QUIET, "scheduled", None, dt.datetime(2025, 1, 4, 2, tzinfo=UTC))),
            data=audit.data_section({"new": []}, {"accepted": [], "quarantined": []}),
            result=audit.result_section("nothing_to_do"),
            written_at=dt.datetime(2025, 1, 4, 2, 1, tzinfo=UTC),
        ),
        trigger={"kind": "schedule", "object_keys": [], "drift_triggered": False},
        monitoring={
            "uri": f"s3://{config.bucket}/monitoring/{QUIET}.json",
            "status": "ok",
            "samples": 300,
            "drift": False,
            "drift_score": 0.0812,
            "drifted_features": [],
            "prediction_shift": 0.01,
            "low_confidence_share": 0.02,
        },
        alert={"wanted": False, "sent": False, "reason": None, "error": None, "message_id": None},
    )
    asset_evaluation = write_evaluation(s3, config, ASSET, wrong=4)
    asset_run = audit.run_section(
        dag_run(ASSET, "asset_triggered", None, dt.datetime(2025, 1, 5, 3, tzinfo=UTC)), {"min_accuracy": 0.9}
    )
    asset = with_sections(
        audit.build_audit_record(
            run=asset_run,
            data=audit.data_section(
                {"new": ASSET_KEYS},
                {
                    "accepted": [{"key": key, "sha256": "ef" * 32, "rows": 500} for key in ASSET_KEYS],
                    "quarantined": [],
                },
            ),
            training=audit.training_section(training_job("mnist-retraining-asset-0105", 61)),
            decision=audit.decision_section(asset_evaluation),
            deployment=audit.deployment_section(publish={"version": "3"}),
            result=audit.result_section("deployed"),
            written_at=dt.datetime(2025, 1, 5, 3, 20, tzinfo=UTC),
        ),
        trigger={"kind": "asset", "object_keys": ASSET_KEYS, "drift_triggered": False},
        monitoring={
            "uri": f"s3://{config.bucket}/monitoring/{ASSET}.json",
            "status": "drift",
            "samples": 640,
            "drift": True,
            "drift_score": 0.4123,
            "drifted_features": [
                {"feature": "mean_intensity", "observed": 0.41, "expected": 0.13, "threshold": 0.05},
                {"feature": "ink_fraction", "observed": 0.35, "expected": 0.19, "threshold": 0.1},
            ],
            "prediction_shift": 0.21,
            "low_confidence_share": 0.125,
        },
        alert={
            "wanted": True,
            "sent": False,
            "reason": "live traffic drifted",
            "error": "SNS: topic mnist-alerts does not exist",
            "message_id": None,
        },
    )
    for record in (deployed, rejected, quiet, asset):
        audit.write_audit(s3, config, record)
    # After its run, a person withdrew the deployed model.
    set_package_status(sm, deployed_package, "Rejected", "withdrawn by bob")
    return SimpleNamespace(
        config=config, s3=s3, sm=sm, deployed_package=deployed_package, asset_evaluation=asset_evaluation
    )


@pytest.fixture
def aws_default(localcloud, history, monkeypatch):
    """The CLI's and the plugin's way in: the aws_default connection and the mnist_* settings."""
    use_as_aws_default(monkeypatch, localcloud.endpoint_url, history.config.region)
    monkeypatch.setenv("MNIST_BUCKET", history.config.bucket)
    monkeypatch.setenv("MNIST_REGION", history.config.region)
    monkeypatch.setenv("MNIST_SAGEMAKER_ROLE_ARN", ROLE_ARN)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    return history


def test_rows_join_audit_records_with_the_registry_newest_first(history):
    rows = audit_view.run_rows(history.s3, history.sm, history.config, airflow_url=AIRFLOW_URL)

    assert [row["run_id"] for row in rows] == [ASSET, QUIET, MANUAL, SCHEDULED]
    asset, quiet, manual, scheduled = rows
    assert scheduled["run_url"] == (
        f"{AIRFLOW_URL}/dags/mnist_retraining/runs/scheduled__2025-01-02T02%3A00%3A00%2B00%3A00"
    )
    assert scheduled["trigger"] == {"type": "scheduled", "by": "scheduler"}
    assert scheduled["data"] == {
        "accepted": 1,
        "quarantined": 1,
        "quarantine_reasons": ["labels: 12 values outside 0..9"],
    }
    assert scheduled["training"] == {
        "job_name": "mnist-retraining-scheduled-0102",
        "status": "Completed",
        "duration_seconds": 125,
    }
    assert (scheduled["accuracy"], scheduled["champion_accuracy"]) == (0.9912, 0.9890)
    assert scheduled["model_package"] == {
        "arn": history.deployed_package,
        "status": "Rejected",
        "status_at_run": "Approved",
    }
    assert scheduled["lambda_version"] == "2"
    assert scheduled["alias_before"]["version"] == "1" and scheduled["alias_after"]["version"] == "2"
    assert manual["trigger"] == {"type": "manual", "by": "alice"}
    assert manual["gate"] == {"approved": False, "reasons": ["accuracy 0.9501 < min_accuracy 0.9700"]}
    assert manual["outcome"] == "rejected" and manual["lambda_version"] is None
    assert (
        quiet["training"] is None and quiet["model_package"] is None and quiet["outcome"] == "nothing_to_do"
    )

    assert [
        row["run_id"] for row in audit_view.run_rows(history.s3, history.sm, history.config, limit=1)
    ] == [ASSET]


def test_rows_carry_the_trigger_the_drift_check_and_the_alert_and_say_none_for_older_records(history):
    asset, quiet, manual, scheduled = audit_view.run_rows(history.s3, history.sm, history.config)

    assert asset["started_by"] == {"kind": "asset", "object_keys": ASSET_KEYS, "drift_triggered": False}
    assert asset["monitoring"]["status"] == "drift" and asset["monitoring"]["drift_score"] == 0.4123
    assert [feature["feature"] for feature in asset["monitoring"]["drifted_features"]] == [
        "mean_intensity",
        "ink_fraction",
    ]
    assert asset["alert"]["wanted"] and not asset["alert"]["sent"]
    assert asset["min_accuracy"] == 0.9  # the run's params
    assert asset["evaluation_uri"] == history.asset_evaluation["evaluation_uri"]
    assert asset["report_uri"] == history.asset_evaluation["report_uri"]
    assert quiet["monitoring"]["status"] == "ok" and quiet["alert"]["wanted"] is False
    for old in (manual, scheduled):  # written before those sections existed
        assert old["started_by"] is None and old["monitoring"] is None and old["alert"] is None
        assert old["min_accuracy"] == 0.97  # no params: the threshold the gate recorded
        assert old["report_uri"] is None
        cells = audit_view.cells(old)
        assert (cells["Drift"], cells["Alert"]) == ("-", "-")
    assert audit_view.cells(scheduled)["Trigger"] == "scheduled by scheduler"
    assert audit_view.cells(manual)["Trigger"] == "manual by alice"


def test_cli_json_prints_the_rows(aws_default, capsys):
    assert audit_view.main(["--json", "--airflow-url", AIRFLOW_URL]) == 0

    printed = json.loads(capsys.readouterr().out)
    assert printed == audit_view.run_rows(
        aws_default.s3, aws_default.sm, aws_default.config, airflow_url=AIRFLOW_URL
    )


def test_cli_table_shows_each_run_its_reasons_and_its_link(aws_default, capsys):
    assert audit_view.main(["--airflow-url", AIRFLOW_URL]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "Date", "Run", "Trigger", "Drift", "Data", "Training", "Accuracy", "Gate", "Package", "Lambda",
        "Alias", "Alert", "Outcome",
    ]  # fmt: skip
    deployed = next(line for line in lines if line.startswith("2025-01-02 02:00"))
    for text in (
        SCHEDULED,
        "scheduled by scheduler",
        "1 accepted, 1 quarantined",
        "mnist-retraining-scheduled-0102 Completed (2m05s)",
        "0.9912 vs 0.9890",
        "approved",
        "Rejected (was Approved)",
        "v2",
        "v1 -> v2",
        "deployed",
    ):
        assert text in deployed
    following = lines[lines.index(deployed) + 1 :][:3]
    assert following == [
        "    quarantined: labels: 12 values outside 0..9",
        "    accuracy 0.9912 >= min_accuracy 0.9700",
        f"    {AIRFLOW_URL}/dags/mnist_retraining/runs/scheduled__2025-01-02T02%3A00%3A00%2B00%3A00",
    ]
    manual = next(line for line in lines if MANUAL in line)
    assert "manual by alice" in manual and "0.9501 vs 0.9912" in manual and "rejected" in manual


def test_cli_table_shows_the_drift_summary_and_the_trigger_of_each_run(aws_default, capsys):
    assert audit_view.main(["--airflow-url", AIRFLOW_URL]) == 0

    lines = capsys.readouterr().out.splitlines()
    asset = next(line for line in lines if line.startswith("2025-01-05 03:00"))
    for text in ("asset (2 keys)", "drift 0.412, 2 features", "2 accepted, 0 quarantined", "v3", "failed"):
        assert text in asset
    following = lines[lines.index(asset) + 1 :]
    assert following[: following.index(f"    {audit_view.run_url(AIRFLOW_URL, ASSET)}")] == [
        "    key: data/incoming/batch-0003.npz",
        "    key: data/incoming/batch-0004.npz",
        "    drifted: mean_intensity 0.41 vs expected 0.13 (threshold 0.05)",
        "    drifted: ink_fraction 0.35 vs expected 0.19 (threshold 0.1)",
        "    traffic: 640 samples, prediction shift 0.21, low confidence 12.5%",
        "    no champion",
        "    alert: live traffic drifted",
        "    alert not sent: SNS: topic mnist-alerts does not exist",
    ]
    quiet = next(line for line in lines if QUIET in line)
    assert "schedule by scheduler" in quiet and "ok 0.081" in quiet and "none" in quiet
    assert (
        lines[lines.index(quiet) + 1]
        == "    traffic: 300 samples, prediction shift 0.01, low confidence 2.0%"
    )


@pytest.mark.parametrize(
    ("monitoring", "alert", "drift_cell", "alert_cell"),
    [
        ({"status": "too_few_samples", "samples": 12, "drift": False, "drift_score": None}, None, "too few samples (12)", "-"),
        ({"status": "no_traffic", "samples": 0, "drift": False, "drift_score": None}, None, "no traffic", "-"),
        ({"status": "drift", "drift": True, "drift_score": None}, {"wanted": True, "sent": True, "reason": "drift"}, "drift", "sent"),
        ({"status": "ok", "drift": False, "drift_score": 0.02}, {"wanted": True, "sent": False, "reason": "rejected"}, "ok 0.020", "not sent"),
        (None, {"wanted": False, "sent": False}, "-", "none"),
    ],
)  # fmt: skip
def test_drift_and_alert_cells_say_what_happened(monitoring, alert, drift_cell, alert_cell):
    record = with_sections(
        audit.build_audit_record(
            run=audit.run_section(dag_run(QUIET, "scheduled", None, dt.datetime(2025, 1, 4, 2, tzinfo=UTC))),
            result=audit.result_section("nothing_to_do"),
        ),
        trigger={
            "kind": "schedule",
            "object_keys": [],
            "drift_triggered": bool((monitoring or {}).get("drift")),
        },
        monitoring=monitoring,
        alert=alert,
    )

    cells = audit_view.cells(audit_view.run_row(record, sm=None, airflow_url=""))

    assert (cells["Drift"], cells["Alert"]) == (drift_cell, alert_cell)
    assert cells["Trigger"] == (
        "schedule by scheduler, drift" if (monitoring or {}).get("drift") else "schedule by scheduler"
    )


def test_charts_draw_evaluated_and_scored_runs_oldest_first(history):
    rows = audit_view.run_rows(history.s3, history.sm, history.config)

    charts = audit_view.chart_data(rows)

    assert charts["accuracy"] == {
        "runs": [SCHEDULED, MANUAL, ASSET],  # the quiet night was not evaluated
        "labels": ["2025-01-02 02:00", "2025-01-03 10:00", "2025-01-05 03:00"],
        "candidate": [0.9912, 0.9501, 0.96],
        "champion": [0.9890, 0.9912, None],
        "min_accuracy": [0.97, 0.97, 0.9],
    }
    assert charts["drift"] == {
        "runs": [QUIET, ASSET],  # older records have no drift check
        "labels": ["2025-01-04 02:00", "2025-01-05 03:00"],
        "score": [0.0812, 0.4123],
        "drift": [False, True],
    }
    assert audit_view.chart_data([]) == {
        "accuracy": {"runs": [], "labels": [], "candidate": [], "champion": [], "min_accuracy": []},
        "drift": {"runs": [], "labels": [], "score": [], "drift": []},
    }


def test_confusion_matrices_come_from_each_runs_evaluation_and_a_bad_one_costs_only_its_own(history):
    rows = audit_view.run_rows(history.s3, history.sm, history.config)

    summaries = audit_view.evaluation_summaries(history.s3, history.config, rows)

    assert list(summaries) == [ASSET]  # the older records name no evaluation.json
    matrix = summaries[ASSET]["confusion_matrix"]
    assert matrix == history.asset_evaluation["candidate"]["confusion_matrix"]
    assert (matrix[3][3], matrix[3][8], sum(map(sum, matrix))) == (6, 4, 100)

    history.s3.put_object(
        Bucket=history.config.bucket,
        Key=history.config.evaluation_prefix(ASSET) + "evaluation.json",
        Body=b"{not json",
    )
    broken = audit_view.evaluation_summaries(history.s3, history.config, rows)[ASSET]
    assert "error" in broken and history.asset_evaluation["evaluation_uri"] in broken["error"]


def test_cli_names_a_missing_setting(aws_default, monkeypatch, capsys):
    monkeypatch.delenv("MNIST_BUCKET")

    assert audit_view.main([]) == 2
    err = capsys.readouterr().err
    assert "mnist_bucket: missing" in err
    assert "make audit" in err  # a demo user is told the command that has the demo's settings


def test_cli_rejects_a_limit_below_one(capsys):
    with pytest.raises(SystemExit):
        audit_view.main(["--limit", "0"])
    assert "--limit must be at least 1, got 0" in capsys.readouterr().err


# --- the Airflow UI plugin --------------------------------------------------------------------------


@pytest.fixture
def web(aws_default, monkeypatch):
    """The plugin's app as the api-server mounts it, for a user Airflow already let in."""
    from starlette.testclient import TestClient

    import mnist_audit_plugin

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", AIRFLOW_URL)
    mnist_audit_plugin.app.dependency_overrides[mnist_audit_plugin.can_read_runs] = lambda: None
    yield TestClient(mnist_audit_plugin.app)
    mnist_audit_plugin.app.dependency_overrides.clear()


def test_web_json_is_the_cli_json(web, aws_default):
    response = web.get("/runs")

    assert response.status_code == 200
    assert response.json() == audit_view.run_rows(
        aws_default.s3, aws_default.sm, aws_default.config, airflow_url=AIRFLOW_URL
    )
    assert [row["run_id"] for row in web.get("/runs", params={"limit": 2}).json()] == [ASSET, QUIET]
    assert web.get("/runs", params={"limit": 0}).status_code == 422


def test_web_page_shows_the_same_cells_and_links_each_run(web, aws_default):
    response = web.get("/")

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    rows = audit_view.run_rows(aws_default.s3, aws_default.sm, aws_default.config, airflow_url=AIRFLOW_URL)
    for row in rows:
        assert f'<a href="{row["run_url"]}" target="_top">{row["run_id"]}</a>' in page
        for text in audit_view.cells(row).values():
            assert text.replace(">", "&gt;") in page
    assert "<li>quarantined: labels: 12 values outside 0..9</li>" in page
    assert "<li>drifted: mean_intensity 0.41 vs expected 0.13 (threshold 0.05)</li>" in page
    assert "<li>key: data/incoming/batch-0003.npz</li>" in page
    assert "<li>alert not sent: SNS: topic mnist-alerts does not exist</li>" in page
    table = page[page.index('<table id="runs">') :]
    assert table.index(ASSET) < table.index(QUIET) < table.index(MANUAL) < table.index(SCHEDULED)


def page_data(page: str) -> dict:
    start = page.index('<script type="application/json" id="audit-data">') + len(
        '<script type="application/json" id="audit-data">'
    )
    return json.loads(page[start : page.index("</script>", start)])


def test_web_page_draws_the_charts_with_the_plugins_own_chart_library(
    web, aws_default, monkeypatch, tmp_path
):
    import mnist_audit_plugin

    chart_js = tmp_path / "chart.umd.js"
    chart_js.write_text("/* Chart.js stand-in: only served here, never run */")
    monkeypatch.setattr(mnist_audit_plugin, "CHART_JS", chart_js)

    page = web.get("/").text

    rows = audit_view.run_rows(aws_default.s3, aws_default.sm, aws_default.config, airflow_url=AIRFLOW_URL)
    assert page_data(page) == audit_view.chart_data(rows)
    assert '<canvas id="accuracy-chart"' in page and '<canvas id="drift-chart"' in page
    # Served by the plugin, relative to the page: no CDN, and it holds under any base path.
    assert '<script src="static/chart.umd.js"></script><script src="static/audit_charts.js"></script>' in page
    assert '<script src="http' not in page
    assert '<p class="note" id="charts-missing" hidden>' in page
    library = web.get("/static/chart.umd.js")
    assert library.status_code == 200 and library.headers["content-type"].startswith("text/javascript")
    assert library.text == chart_js.read_text()
    script = web.get("/static/audit_charts.js")
    assert script.status_code == 200 and "new Chart(" in script.text


def test_web_page_without_the_chart_library_keeps_its_tables_and_says_how_to_get_the_charts(
    web, aws_default, monkeypatch, tmp_path
):
    import mnist_audit_plugin

    monkeypatch.setattr(mnist_audit_plugin, "CHART_JS", tmp_path / "not-fetched" / "chart.umd.js")

    response = web.get("/")

    assert response.status_code == 200
    page = response.text
    assert (
        '<p class="note" id="charts-missing">' in page and "make install" in page and "make ui-assets" in page
    )
    assert '<script src="static/chart.umd.js">' not in page  # audit_charts.js keeps the note shown
    assert '<table id="runs">' in page and ASSET in page
    missing = web.get("/static/chart.umd.js")
    assert missing.status_code == 404 and "make ui-assets" in missing.json()["detail"]
    assert web.get("/static/mnist_audit_plugin.py").status_code == 404  # only the page's own files


def confusion_cells(page: str, run_id: str) -> list[list[int]]:
    """The counts of the run's heat-map table, row by row."""
    import re

    start = page.index(f'<table class="confusion" data-run="{run_id}">')
    table = page[start : page.index("</table>", start)]
    body = table[table.index("<tbody>") :]
    return [
        [int(count) for count in re.findall(r"<td [^>]*>(\d+)</td>", row)]
        for row in body.split("</tr>")
        if "<td" in row
    ]


def test_web_page_shows_each_evaluated_runs_confusion_matrix_and_links_its_report(web, aws_default):
    import re

    page = web.get("/").text

    assert confusion_cells(page, ASSET) == aws_default.asset_evaluation["candidate"]["confusion_matrix"]
    assert page.count('<table class="confusion"') == 1  # the older records name no evaluation
    assert 'title="true 3, predicted 8: 4"' in page
    links = re.findall(r'<a class="evaluation-link" href="([^"]+)">', page)
    assert links and all(ASSET.replace(":", "%3A").replace("+", "%2B") in link for link in links)
    for link in set(links):  # each link, as the browser resolves it against /mnist-audit/
        response = web.get("/" + link.replace("&amp;", "&"))
        assert response.status_code == 200, (link, response.text)
    report = web.get("/" + next(link for link in links if "report.md" in link))
    assert report.headers["content-type"].startswith("text/plain")
    assert report.text == render_report(
        {
            key: aws_default.asset_evaluation[key]
            for key in ("run_id", "training_job", "model_uri", "holdout", "candidate", "champion", "gate")
        }
    )
    document = web.get("/evaluation/evaluation.json", params={"run": ASSET}).json()
    assert document["candidate"]["confusion_matrix"] == confusion_cells(page, ASSET)


def test_web_evaluation_files_answer_404_saying_what_is_missing(web, aws_default):
    assert web.get("/evaluation/report.md", params={"run": "no-such-run"}).json()["detail"] == (
        "no audit record for run 'no-such-run'"
    )
    response = web.get("/evaluation/report.md", params={"run": QUIET})
    assert response.status_code == 404 and "has no report.md" in response.json()["detail"]
    aws_default.s3.delete_object(
        Bucket=aws_default.config.bucket, Key=aws_default.config.evaluation_prefix(ASSET) + "report.md"
    )
    response = web.get("/evaluation/report.md", params={"run": ASSET})
    assert response.status_code == 404 and "does not exist" in response.json()["detail"]
    assert web.get("/evaluation/model.onnx", params={"run": ASSET}).status_code == 422
    assert web.get("/evaluation/report.md").status_code == 422


def test_web_asks_for_a_login():
    from starlette.testclient import TestClient

    import mnist_audit_plugin

    client = TestClient(mnist_audit_plugin.app)
    assert client.get("/").status_code == 401
    assert client.get("/runs").status_code == 401


def test_airflow_loads_the_plugin_from_the_plugins_folder(tmp_path):
    """What the api-server and the UI get from the plugins folder: the app, its prefix, the menu entry."""
    script = """
import json
from airflow import plugins_manager
plugins, errors = plugins_manager._get_plugins()
external_views, _ = plugins_manager._get_ui_plugins()
apps, _ = plugins_manager.get_fastapi_plugins()
print(json.dumps({
    "plugins": [plugin.name for plugin in plugins],
    "errors": errors,
    "views": external_views,
    "apps": [{**app, "app": type(app["app"]).__name__} for app in apps],
}))
"""
    environment = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])

    assert "mnist_audit" in loaded["plugins"] and loaded["errors"] == {}
    assert {"app": "FastAPI", "url_prefix": "/mnist-audit", "name": "MNIST audit"} in loaded["apps"]
    view = next(view for view in loaded["views"] if view["name"] == "MNIST audit")
    assert view["href"] == "/mnist-audit/" and view["category"] == "browse" and view["url_route"]


def test_plugin_entries_validate_against_airflow_ui_models():
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    import mnist_audit_plugin

    plugin = mnist_audit_plugin.MnistAuditPlugin()
    for view in plugin.external_views:
        ExternalViewResponse.model_validate(view)
    routes = {route.path for route in plugin.fastapi_apps[0]["app"].routes}
    assert {"/", "/runs", "/evaluation/{name}", "/static/{name}"} <= routes


def test_web_lets_in_whom_airflow_lets_read_the_runs(aws_default, airflow_db, monkeypatch):
    """Airflow's own login: its simple auth manager's JWT, as the UI sends it (header or cookie)."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from starlette.testclient import TestClient

    import mnist_audit_plugin

    monkeypatch.setenv(
        "AIRFLOW__CORE__AUTH_MANAGER",
        "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
    )
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "audit-view-test-" * 4)
    token = init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="carol", role="viewer"))
    client = TestClient(mnist_audit_plugin.app)

    assert client.get("/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    client.cookies.set("_token", token)
    assert QUIET in client.get("/").text
    assert client.get("/runs", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403


def test_web_says_which_setting_is_missing(web, monkeypatch):
    monkeypatch.delenv("MNIST_BUCKET")

    response = web.get("/runs")
    assert response.status_code == 503
    assert "mnist_bucket: missing" in response.json()["detail"]


def test_cli_says_when_the_bucket_cannot_be_read(aws_default, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_BUCKET", "no-such-bucket")

    assert audit_view.main([]) == 1
    assert "could not read s3://no-such-bucket/audit/" in capsys.readouterr().err


def test_a_person_rejecting_overrides_the_metric_gate():
    record = audit.build_audit_record(
        run=audit.run_section(dag_run(MANUAL, "manual", "alice", dt.datetime(2025, 1, 3, 10, tzinfo=UTC))),
        decision=audit.decision_section(
            evaluation(0.9912, 0.9890, True, ["accuracy 0.9912 >= min_accuracy 0.9700"]),
            approval={"chosen_options": ["Reject"], "responded_by": "dave", "deploy": False},
        ),
        result=audit.result_section("rejected"),
    )

    row = audit_view.run_row(record, sm=None, airflow_url="")

    assert row["gate"] == {
        "approved": False,
        "reasons": ["accuracy 0.9912 >= min_accuracy 0.9700", "Reject by dave"],
    }
    assert audit_view.cells(row)["Gate"] == "rejected"
    assert row["run_url"] == "/dags/mnist_retraining/runs/manual__2025-01-03T10%3A00%3A00%2B00%3A00"


def test_cli_links_to_the_local_api_server_unless_told_otherwise():
    assert audit_view.default_airflow_url({}) == "http://127.0.0.1:8080"
    assert audit_view.default_airflow_url({"AIRFLOW_PORT": "9090"}) == "http://127.0.0.1:9090"
    assert audit_view.default_airflow_url({"AIRFLOW__API__BASE_URL": "https://airflow.example.com"}) == (
        "https://airflow.example.com"
    )
