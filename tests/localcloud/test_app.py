"""LocalCloud and its CLI: health, `localcloud serve` / `status`, start and stop, one server per data dir."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localcloud.app import LocalCloud, make_client
from localcloud.cli import main as cli_main
from localcloud.config import Config
from localcloud.store import DataDirInUse
from tests.fixtures.raw_http import http

REPO = Path(__file__).resolve().parents[2]


def test_health_reports_services_counts_and_data_dir(localcloud):
    localcloud.client("s3").create_bucket(Bucket="lake")
    status, body = http("GET", f"{localcloud.endpoint_url}/_localcloud/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "running"
    assert health["data_dir"] == str(localcloud.data_dir)
    assert health["services"]["s3"] == {"buckets": 1, "objects": 0}
    assert {"s3", "logs", "sts"} <= set(health["services"])


def test_cli_status_prints_services_or_fails_when_nothing_listens(localcloud, capsys):
    localcloud.client("s3").create_bucket(Bucket="lake")
    assert cli_main(["status", "--endpoint-url", localcloud.endpoint_url]) == 0
    printed = capsys.readouterr().out
    assert "running" in printed and "buckets=1" in printed and str(localcloud.data_dir) in printed

    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    assert cli_main(["status", "--endpoint-url", f"http://127.0.0.1:{free_port}"]) == 1
    assert "not running" in capsys.readouterr().err


@pytest.mark.slow
def test_python_m_localcloud_serves_until_sigterm(tmp_path):
    env = {**os.environ, "LOCALCLOUD_DATA_DIR": str(tmp_path / "state")}
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "localcloud", "serve", "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, server.stderr.read()
        endpoint = line.split("listening on ")[1].split()[0]
        print(f"python -m localcloud serve ready in {time.perf_counter() - started:.2f} s")
        status = subprocess.run(
            [sys.executable, "-m", "localcloud", "status", "--endpoint-url", endpoint],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0 and str(tmp_path / "state") in status.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
    assert (tmp_path / "state" / "localcloud.db").exists()


def start_server_process(data_dir: Path) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "localcloud", "serve", "--port", "0", "--data-dir", str(data_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = server.stdout.readline()
    assert "listening on" in line, line
    return server, line.split("listening on ")[1].split()[0]


@pytest.mark.slow
def test_a_killed_server_loses_nothing_it_acknowledged(tmp_path):
    server, endpoint = start_server_process(tmp_path)
    try:
        s3 = make_client(endpoint, "s3")
        s3.create_bucket(Bucket="lake")
        s3.put_object(Bucket="lake", Key="audit/run-1.json", Body=b'{"decision": "deploy"}')
        logs = make_client(endpoint, "logs")
        logs.create_log_group(logGroupName="g")
        logs.create_log_stream(logGroupName="g", logStreamName="s")
        logs.put_log_events(
            logGroupName="g",
            logStreamName="s",
            logEvents=[{"timestamp": int(time.time() * 1000), "message": "ok"}],
        )
    finally:
        server.kill()  # SIGKILL: no shutdown hook, no clean close
        server.wait(timeout=10)

    server, endpoint = start_server_process(tmp_path)  # the data-dir lock died with the process
    try:
        s3 = make_client(endpoint, "s3")
        assert (
            s3.get_object(Bucket="lake", Key="audit/run-1.json")["Body"].read() == b'{"decision": "deploy"}'
        )
        events = make_client(endpoint, "logs").get_log_events(logGroupName="g", logStreamName="s")["events"]
        assert [e["message"] for e in events] == ["ok"]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_non_loopback_bind_needs_the_explicit_flag(tmp_path, capsys):
    with pytest.raises(ValueError, match="--allow-non-loopback"):
        LocalCloud(Config(data_dir=tmp_path, host="0.0.0.0", port=0)).start()
    assert cli_main(["serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path)]) == 2
    assert "--allow-non-loopback" in capsys.readouterr().err


def test_one_data_dir_one_server_and_busy_ports_are_explained(localcloud, tmp_path):
    with pytest.raises(DataDirInUse, match="in use by another localcloud"):
        LocalCloud(Config(data_dir=localcloud.data_dir, port=0)).start()
    port = int(localcloud.endpoint_url.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match=f"port {port} .* in use"):
        LocalCloud(Config(data_dir=tmp_path / "other", port=port)).start()


@pytest.mark.slow
def test_stop_returns_promptly_with_idle_keep_alive_connections(tmp_path):
    cloud = LocalCloud(Config(data_dir=tmp_path, port=0)).start()
    client = cloud.client("sts")
    client.get_caller_identity()  # leaves a pooled keep-alive connection open
    started = time.perf_counter()
    cloud.stop()
    assert time.perf_counter() - started < 2
