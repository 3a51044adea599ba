"""The demo's commands against a real `localcloud serve`: status and down of what up started, what
endpoint and feed say when nothing runs, and ``audit`` with the demo's settings.

The whole `make demo` (Airflow standalone, a full training run) takes minutes; it is run by hand,
not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from devtools.bootstrap import (
    client,
    ensure_bucket,
    ensure_model_package_group,
    feed_next_batch,
    pipeline_config,
)
from devtools.cli import down, main, status
from devtools.layout import DAG_ID, DemoError
from devtools.processes import pid_file, running_pid
from mnist_pipeline import audit

REPO = Path(__file__).resolve().parents[2]
RUN_ID = "manual__2026-01-02T03:04:05+00:00"


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 (loopback http)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def live_group_members(pgid: int) -> list[str]:
    """``ps`` lines of the group's processes that still run (a zombie is dead, only not yet reaped)."""
    listed = subprocess.run(
        ["ps", "-eo", "pgid=,pid=,stat=,args="], capture_output=True, text=True, check=True
    )
    return [
        line
        for line in listed.stdout.splitlines()
        if line.split()[0] == str(pgid) and not line.split()[2].startswith("Z")
    ]


def test_down_stops_the_localcloud_it_started_and_status_says_so(running_localcloud, capsys):
    layout = running_localcloud
    pid = running_pid(layout.run_dir, "localcloud")
    health = f"{layout.localcloud_url}/_localcloud/health"
    assert pid is not None and answers(health)
    status(layout)
    assert f"localcloud  running  pid {pid} (1 process)" in capsys.readouterr().out

    down(layout)

    assert "localcloud: stopped" in capsys.readouterr().out
    assert not answers(health)
    assert live_group_members(pid) == []  # nothing of its process group is left
    assert not pid_file(layout.run_dir, "localcloud").exists()
    status(layout)
    assert "localcloud  stopped" in capsys.readouterr().out


def test_endpoint_and_feed_say_what_to_run_when_localcloud_is_down(layout, capsys):
    assert main(["endpoint", "--root", str(layout.root)]) == 1
    assert "localcloud is not running" in capsys.readouterr().err
    with pytest.raises(DemoError, match="make demo"):
        feed_next_batch(layout)


def a_new_users_shell(layout) -> dict[str, str]:
    """The environment of a person's terminal right after `make demo`: none of the demo's Airflow
    settings, no pipeline settings, no AWS profile."""
    keep = ("PATH", "LANG", "TMPDIR")
    env = {name: value for name, value in os.environ.items() if name in keep}
    return {
        **env,
        "HOME": str(layout.root / "home"),  # whatever Airflow writes to ~/airflow stays in the test
        "LOCALCLOUD_PORT": str(layout.localcloud_port),
        "AIRFLOW_PORT": str(layout.airflow_port),
    }


def test_audit_prints_the_demos_runs_with_the_demos_settings(running_localcloud):
    layout = running_localcloud
    config = pipeline_config()
    s3 = client(layout, "s3")
    ensure_bucket(s3, config)
    ensure_model_package_group(client(layout, "sagemaker"), config)
    run = SimpleNamespace(dag_id=DAG_ID, run_id=RUN_ID, run_type=SimpleNamespace(value="manual"), conf={})
    audit.write_audit(
        s3,
        config,
        audit.build_audit_record(run=audit.run_section(run), result=audit.result_section("nothing_to_do")),
    )
    shell = a_new_users_shell(layout)

    # What the README used to say: the audit view alone has none of the demo's settings.
    alone = subprocess.run(
        [sys.executable, "-m", "mnist_pipeline.audit_view", "--json"],
        env=shell,
        cwd=layout.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert alone.returncode == 2, alone.stderr
    assert "mnist_region: missing" in alone.stderr and "make audit" in alone.stderr

    for audit_args, shown in ((["--json"], f'"run_id": "{RUN_ID}"'), ([], RUN_ID)):
        result = subprocess.run(
            [sys.executable, "-m", "devtools", "audit", "--root", str(layout.root), *audit_args],
            env=shell,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert shown in result.stdout
        assert f"{layout.airflow_url}/dags/{DAG_ID}/runs/" in result.stdout  # links to the demo's Airflow
    rows = json.loads(
        subprocess.run(
            [sys.executable, "-m", "devtools", "audit", "--root", str(layout.root), "--json", "--limit", "1"],
            env=shell,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    )
    assert [row["run_id"] for row in rows] == [RUN_ID]


def test_audit_says_to_start_the_demo_when_localcloud_is_down(layout, capsys):
    assert main(["audit", "--root", str(layout.root), "--json"]) == 1
    assert "make demo" in capsys.readouterr().err


def test_only_audit_takes_the_audit_views_options(layout):
    with pytest.raises(SystemExit):
        main(["status", "--json", "--root", str(layout.root)])


def test_alerts_prints_what_the_topic_delivered_and_keeps_it(running_localcloud, capsys):
    from devtools.bootstrap import ensure_alerts
    from devtools.cli import alerts

    layout = running_localcloud
    sqs, sns = client(layout, "sqs"), client(layout, "sns")
    topic_arn, _ = ensure_alerts(sns, sqs)
    assert alerts(layout) == 0
    assert "no alerts yet" in capsys.readouterr().out
    sns.publish(TopicArn=topic_arn, Subject="mnist_retraining: rolled_back", Message="canary failed")
    for _ in range(2):  # a second look shows the same history
        assert alerts(layout) == 0
        out = capsys.readouterr().out
        assert "mnist_retraining: rolled_back" in out and "canary failed" in out
