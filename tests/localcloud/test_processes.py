"""localcloud.processes: children die with localcloud, groups end with their leader, records reap leftovers.

The end-to-end check (kill -9 of a real localcloud with a Lambda worker and a training job running) is
in test_sagemaker.py; these are the mechanisms one by one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from localcloud.processes import (
    GROUP_KIND,
    ProcessGroups,
    boot_id,
    end_group,
    live_members,
    python_command,
    read_stat,
)
from localcloud.store import Store


def wait_for(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


@pytest.fixture
def started():
    """Start processes in groups of their own; whatever a test leaves running is killed after it."""
    processes: list[subprocess.Popen] = []

    def start(argv: list[str], **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(argv, start_new_session=True, **kwargs)
        processes.append(process)
        return process

    yield start
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_child_and_what_it_started_die_when_the_process_that_started_them_is_killed(started):
    parent = started(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from localcloud.processes import python_command\n"
            'code = \'import subprocess, time; c = subprocess.Popen(["sleep", "60"]); '
            "print(c.pid, flush=True); time.sleep(60)'\n"
            "child = subprocess.Popen(python_command(code), start_new_session=True, stdout=subprocess.PIPE)\n"
            "print(child.pid, child.stdout.readline().decode().strip(), flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child, grandchild = map(int, parent.stdout.readline().split())
    assert read_stat(grandchild).pgid == child
    parent.kill()  # SIGKILL: no cleanup code of the parent runs
    assert wait_for(lambda: not live_members(child), timeout=2), live_members(child)


def test_sigterm_still_reaches_the_child_as_sigterm(started):
    child = started(
        python_command("import signal, sys, time\nsignal.signal(15, lambda *a: sys.exit(7))\ntime.sleep(60)")
    )
    time.sleep(0.3)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=10) == 7


def test_a_group_ends_with_its_leader(started):
    leader = started(
        python_command("import subprocess; print(subprocess.Popen(['sleep', '60']).pid)"),
        stdout=subprocess.PIPE,
    )
    left_behind = int(leader.stdout.readline())
    assert end_group(leader) == 0
    assert wait_for(lambda: not live_members(leader.pid)), f"{left_behind} outlived its group's leader"


def test_start_reaps_recorded_groups_and_spares_a_reused_pid(tmp_path, started):
    store = Store(tmp_path)
    try:
        groups = ProcessGroups(store)
        # Plain processes, without the parent-death signal: as if a previous localcloud left them behind.
        leftover = started(["sleep", "60"])
        groups.add(leftover, "a leftover")
        bystander = started(["sleep", "60"])
        stat = read_stat(bystander.pid)
        # A record whose leader pid is now another process's (it started later): the pid was reused.
        store.put(
            GROUP_KIND,
            "reused",
            {
                "pgid": stat.pid,
                "sid": stat.sid,
                "leader_start": stat.start - 100,
                "boot_id": boot_id(),
                "what": "an old group",
                "recorded": 0,
            },
        )
        # A record from before the last reboot.
        store.put(
            GROUP_KIND,
            "old-boot",
            {
                "pgid": stat.pid,
                "sid": stat.sid,
                "leader_start": stat.start,
                "boot_id": "another boot",
                "what": "a group of another boot",
                "recorded": 0,
            },
        )

        assert groups.reap_leftovers() == 1
        assert leftover.wait(timeout=5) == -signal.SIGKILL
        time.sleep(0.1)
        assert bystander.poll() is None
        assert store.scan(GROUP_KIND) == []
    finally:
        store.close()


@pytest.mark.slow
def test_localcloud_start_reaps_what_a_killed_predecessor_left_behind(tmp_path, started):
    from localcloud.app import LocalCloud
    from localcloud.config import Config

    store = Store(tmp_path / "data")
    leftover = started(["sleep", "60"])  # a group the previous localcloud recorded, then died without ending
    ProcessGroups(store).add(leftover, "a Lambda worker")
    store.close()
    with LocalCloud(Config(data_dir=tmp_path / "data", port=0)) as cloud:
        assert leftover.wait(timeout=5) == -signal.SIGKILL
        assert cloud.store.scan(GROUP_KIND) == []
