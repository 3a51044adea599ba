"""The demo's process manager: pid files that never signal a stranger, a start that fails fast."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from devtools.layout import DemoError
from devtools.processes import pid_file, running_pid, start_process, stop_process, wait_for_http


def test_down_never_signals_a_process_that_merely_reuses_a_recorded_pid(layout):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        layout.run_dir.mkdir(parents=True)
        # A record of an earlier process that had this pid: same id, another start time.
        pid_file(layout.run_dir, "localcloud").write_text(
            json.dumps({"pid": stranger.pid, "start_time": "1", "argv": ["localcloud"]})
        )
        assert running_pid(layout.run_dir, "localcloud") is None
        assert stop_process(layout.run_dir, "localcloud") is False
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_process_that_dies_at_start_fails_fast_with_its_log(layout):
    layout.run_dir.mkdir(parents=True)
    start_process(
        layout.run_dir,
        "localcloud",
        [sys.executable, "-c", "raise SystemExit(3)"],
        {},
        layout.run_dir / "x.log",
        layout.root,
    )
    started = time.monotonic()
    with pytest.raises(DemoError, match="exited; see its log"):
        wait_for_http(
            layout.localcloud_url,
            30,
            process_alive=lambda: running_pid(layout.run_dir, "localcloud") is not None,
        )
    assert time.monotonic() - started < 10
