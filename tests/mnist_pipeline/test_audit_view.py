"""The audit of past runs: the CLI and the Airflow UI plugin show the same rows, read from a localcloud.

Three runs are audited with :mod:`mnist_pipeline.audit`'s builders, as the DAG's audit task writes
them, and registered in localcloud's model registry; the deployed run's package is then rejected
by a person, which both views must show (the registry's status now, and what it was at the run).
"""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mnist_pipeline import audit, audit_view
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.sagemaker_hook import set_package_status

REPO = Path(__file__).resolve().parents[2]
ROLE_ARN = "arn:aws:iam::123456789012:role/mnist-sagemaker"
AIRFLOW_URL = "http://airflow.test:8080"
UTC = dt.UTC

SCHEDULED = "scheduled__2025-01-02T02:00:00+00:00"
MANUAL = "manual__2025-01-03T10:00:00+00:00"
QUIET = "scheduled__2025-01-04T02:00:00+00:00"


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
    quiet = audit.build_audit_record(
        run=audit.run_section(dag_run(QUIET, "scheduled", None, dt.datetime(2025, 1, 4, 2, tzinfo=UTC))),
        data=audit.data_section({"new": []}, {"accepted": [], "quarantined": []}),
        result=audit.result_section("nothing_to_do"),
        written_at=dt.datetime(2025, 1, 4, 2, 1, tzinfo=UTC),
    )
    for record in (deployed, rejected, quiet):
        audit.write_audit(s3, config, record)
    # After its run, a person withdrew the deployed model.
    set_package_status(sm, deployed_package, "Rejected", "withdrawn by bob")
    return SimpleNamespace(config=config, s3=s3, sm=sm, deployed_package=deployed_package)


@pytest.fixture
def aws_default(localcloud, history, monkeypatch):
    """The CLI's and the plugin's way in: the aws_default connection and the mnist_* settings."""
    connection = {
        "conn_type": "aws",
        "login": "localcloud",
        "password": "localcloud",
        "extra": {"endpoint_url": localcloud.endpoint_url, "region_name": history.config.region},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    monkeypatch.setenv("MNIST_BUCKET", history.config.bucket)
    monkeypatch.setenv("MNIST_REGION", history.config.region)
    monkeypatch.setenv("MNIST_SAGEMAKER_ROLE_ARN", ROLE_ARN)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    return history


def test_rows_join_audit_records_with_the_registry_newest_first(history):
    rows = audit_view.run_rows(history.s3, history.sm, history.config, airflow_url=AIRFLOW_URL)

    assert [row["run_id"] for row in rows] == [QUIET, MANUAL, SCHEDULED]
    quiet, manual, scheduled = rows
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
    ] == [QUIET]


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
        "Date", "Run", "Trigger", "Data", "Training", "Accuracy", "Gate", "Package", "Lambda", "Alias", "Outcome"
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
        "    accuracy 0.9912 >= min_accuracy 0.9700",
        "    quarantined: labels: 12 values outside 0..9",
        f"    {AIRFLOW_URL}/dags/mnist_retraining/runs/scheduled__2025-01-02T02%3A00%3A00%2B00%3A00",
    ]
    manual = next(line for line in lines if MANUAL in line)
    assert "manual by alice" in manual and "0.9501 vs 0.9912" in manual and "rejected" in manual


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
    assert [row["run_id"] for row in web.get("/runs", params={"limit": 2}).json()] == [QUIET, MANUAL]
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
    assert page.index(QUIET) < page.index(MANUAL) < page.index(SCHEDULED)


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
    assert {"/", "/runs"} <= routes


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
