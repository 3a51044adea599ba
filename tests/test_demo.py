"""`make demo`'s pieces: its process manager against a real `localcloud serve`, the bootstrap of the
HTTP API and the nightly feed against it, the Airflow environment, and what it prints.

The whole `make demo` (Airflow standalone, a full training run) takes minutes; it is run by hand,
not here.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from mnist_pipeline import demo
from mnist_pipeline.config import load_config
from mnist_pipeline.dataset import LakePlan, Mnist

SMALL_LAKE = LakePlan(base_size=1000, shard_size=500, batches=3, batch_size=200)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture
def layout(tmp_path):
    layout = demo.Layout(root=tmp_path, localcloud_port=free_port(), airflow_port=free_port())
    yield layout
    demo.down(layout)  # whatever a failing test left running


@pytest.fixture
def running_localcloud(layout):
    demo.start_localcloud(layout)
    return layout


def test_down_stops_the_localcloud_it_started_and_status_says_so(running_localcloud, capsys):
    layout = running_localcloud
    pid = demo.running_pid(layout.run_dir, "localcloud")
    health = f"{layout.localcloud_url}/_localcloud/health"
    assert pid is not None and answers(health)
    demo.status(layout)
    assert f"localcloud  running  pid {pid} (1 process)" in capsys.readouterr().out

    demo.down(layout)

    assert "localcloud: stopped" in capsys.readouterr().out
    assert not answers(health)
    assert live_group_members(pid) == []  # nothing of its process group is left
    assert not demo.pid_file(layout.run_dir, "localcloud").exists()
    demo.status(layout)
    assert "localcloud  stopped" in capsys.readouterr().out


def test_starting_twice_keeps_the_running_localcloud(running_localcloud, capsys):
    first = demo.running_pid(running_localcloud.run_dir, "localcloud")
    demo.start_localcloud(running_localcloud)
    assert demo.running_pid(running_localcloud.run_dir, "localcloud") == first
    assert "already running" in capsys.readouterr().out


def test_down_never_signals_a_process_that_merely_reuses_a_recorded_pid(layout):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        layout.run_dir.mkdir(parents=True)
        # A record of an earlier process that had this pid: same id, another start time.
        demo.pid_file(layout.run_dir, "localcloud").write_text(
            json.dumps({"pid": stranger.pid, "start_time": "1", "argv": ["localcloud"]})
        )
        assert demo.running_pid(layout.run_dir, "localcloud") is None
        assert demo.stop_process(layout.run_dir, "localcloud") is False
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_process_that_dies_at_start_fails_fast_with_its_log(layout):
    layout.run_dir.mkdir(parents=True)
    demo.start_process(
        layout.run_dir,
        "localcloud",
        [sys.executable, "-c", "raise SystemExit(3)"],
        {},
        layout.run_dir / "x.log",
        layout.root,
    )
    started = time.monotonic()
    with pytest.raises(demo.DemoError, match="exited; see its log"):
        demo.wait_for_http(
            layout.localcloud_url,
            30,
            process_alive=lambda: demo.running_pid(layout.run_dir, "localcloud") is not None,
        )
    assert time.monotonic() - started < 10


def test_bootstrap_is_idempotent_and_feed_delivers_the_nightly_batches_in_order(running_localcloud, mnist):
    layout = running_localcloud
    small = Mnist(
        mnist.train_images[:2000], mnist.train_labels[:2000], mnist.test_images[:300], mnist.test_labels[:300]
    )
    demo.prepare_lake(layout, small, SMALL_LAKE)

    first = demo.bootstrap_demo(layout)
    again = demo.bootstrap_demo(layout)

    assert again["api_id"] == first["api_id"] and again["uploaded"] == []
    assert (
        demo.find_endpoint(layout)
        == first["endpoint"]
        == f"{layout.localcloud_url}/_aws/execute-api/{first['api_id']}/mnist"
    )
    s3 = demo.client(layout, "s3")

    def incoming() -> list[str]:
        listed = s3.list_objects_v2(Bucket=demo.BUCKET, Prefix="data/incoming/").get("Contents", [])
        return [item["Key"].rsplit("/", 1)[1] for item in listed]

    assert incoming() == ["batch-0001.npz"]
    assert demo.feed_next_batch(layout) == "data/incoming/batch-0002.npz"
    assert demo.feed_next_batch(layout) == "data/incoming/batch-0003.npz"
    with pytest.raises(demo.DemoError, match="every nightly batch has been fed"):
        demo.feed_next_batch(layout)
    assert incoming() == ["batch-0001.npz", "batch-0002.npz", "batch-0003.npz"]
    assert demo.bootstrap_demo(layout)["uploaded"] == []  # the fed batches are part of the lake now

    # Before a run has created the alias `live`, the route exists but has nothing to call.
    with pytest.raises(demo.DemoError, match=r"answered HTTP [45]\d\d"):
        demo.curl_predict(first["endpoint"], mnist.test_images[0].reshape(-1).tolist())


def test_endpoint_and_feed_say_what_to_run_when_localcloud_is_down(layout, capsys):
    assert demo.main(["endpoint", "--root", str(layout.root)]) == 1
    assert "localcloud is not running" in capsys.readouterr().err
    with pytest.raises(demo.DemoError, match="make demo"):
        demo.feed_next_batch(layout)


def test_airflow_environment_points_aws_default_at_localcloud_and_sets_every_required_variable(layout):
    env = demo.airflow_environment(layout, "abc123", {"PATH": "/usr/bin", "AWS_PROFILE": "prod"})

    connection = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert connection["extra"] == {"endpoint_url": layout.localcloud_url, "region_name": demo.REGION}
    assert "AWS_PROFILE" not in env  # a developer's real AWS profile never reaches the tasks
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == str(layout.airflow_port)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW_HOME"] == str(layout.root / ".airflow")
    variables = {
        name.removeprefix("AIRFLOW_VAR_").lower(): value
        for name, value in env.items()
        if name.startswith("AIRFLOW_VAR_")
    }
    config = load_config(variables, environ={})
    assert (config.bucket, config.api_id) == (demo.BUCKET, "abc123")
    # The JWT secret is shared by every Airflow process and survives a restart.
    assert (
        demo.airflow_environment(layout, None, {})["AIRFLOW__API_AUTH__JWT_SECRET"]
        == env["AIRFLOW__API_AUTH__JWT_SECRET"]
    )


def test_a_port_setting_that_is_not_a_port_is_named():
    with pytest.raises(demo.DemoError, match="AIRFLOW_PORT='80a80'"):
        demo.Layout.from_env(".", {"AIRFLOW_PORT": "80a80"})


def test_progress_shows_each_task_state_change_once():
    before = {"load_settings": "success", "train.train_model": "queued", "deploy.smoke_test": None}
    after = {"load_settings": "success", "train.train_model": "running", "deploy.smoke_test": None}
    assert demo.state_changes({}, before) == ["load_settings: success", "train.train_model: queued"]
    assert demo.state_changes(before, after) == ["train.train_model: queued → running"]
    assert demo.state_changes(after, after) == []


def test_progress_shows_the_training_epochs_from_the_job_log():
    lines = [
        "training on 52000 images from 6 shard(s)",
        "METRICS epoch=1/3 train_loss=0.201000 test_loss=0.060000 test_accuracy=0.981200 seconds=31.2",
        "METRICS epoch=2/3 train_loss=0.051000 test_loss=0.040000 test_accuracy=0.990300",
    ]
    assert demo.epoch_lines(lines) == [
        "epoch 1/3: train loss 0.201000, test accuracy 98.12% (31.2 s)",
        "epoch 2/3: train loss 0.051000, test accuracy 99.03%",
    ]
