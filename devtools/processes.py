"""The demo's processes: each started as the leader of its own process group, recorded in
``.run/<name>.pid`` with its start time, so that ``down`` stops exactly what ``up`` started and never
a process that merely reuses a recorded pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from devtools.layout import DemoError


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/<pid>/stat), None if it is gone.

    Recorded next to the pid so that a pid the kernel reused for another process is never signalled.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def pid_file(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / f"{name}.pid"


def start_process(
    run_dir: Path, name: str, argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path
) -> int:
    """Start ``argv`` as the leader of a new process group, output to ``log_path``; record its id."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    started = _start_time(process.pid)
    pid_file(run_dir, name).write_text(json.dumps({"pid": process.pid, "start_time": started, "argv": argv}))
    return process.pid


def running_pid(run_dir: Path, name: str) -> int | None:
    """The recorded process's id if that very process still runs, else None (a stale file is removed)."""
    path = pid_file(run_dir, name)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        path.unlink()
        return None
    if _start_time(record["pid"]) != record["start_time"]:
        path.unlink(missing_ok=True)
        return None
    return record["pid"]


def group_members(pgid: int) -> list[int]:
    """The ids of the group's processes that still run (zombies, dead but not reaped, do not count)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text()
        except OSError:
            continue  # it ended while we looked
        state, _parent, group = fields[fields.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def stop_process(
    run_dir: Path, name: str, timeout_s: float = 20.0, stop_signal: signal.Signals = signal.SIGTERM
) -> bool:
    """Signal the recorded process group, SIGKILL what is left after ``timeout_s``; True if it ran."""
    pid = running_pid(run_dir, name)
    if pid is None:
        pid_file(run_dir, name).unlink(missing_ok=True)
        return False
    os.killpg(pid, stop_signal)
    deadline = time.monotonic() + timeout_s
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pid):
        os.killpg(pid, signal.SIGKILL)
        while _group_alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.1)
    pid_file(run_dir, name).unlink(missing_ok=True)
    return True


def wait_for_http(
    url: str, timeout_s: float, *, process_alive: Callable[[], bool] = lambda: True, poll_s: float = 0.5
) -> None:
    """Poll ``url`` every ``poll_s`` until it answers (any HTTP status); fail early when the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 (a loopback http URL we built)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if not process_alive():
                raise DemoError(f"the process meant to serve {url} exited; see its log in .run/") from None
            time.sleep(poll_s)
    raise DemoError(f"nothing answered at {url} within {timeout_s:.0f} s; see the logs in .run/")
