"""``make demo`` end to end (target: <= 4 minutes with the environment installed).

Runs ``python -m devtools up`` exactly as ``make demo`` does, but in a temporary
project root (``dags/`` and ``plugins/`` linked to this repo) on free ports, so the developer's
own ``.airflow/``, ``.localcloud/`` and running demo are never touched. A second ``up`` on the same
state shows what a rerun costs (it must do no duplicate work). Both must exit 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Figure, free_port

REPO = Path(__file__).resolve().parents[1]


def _demo(command: str, root: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "devtools", command, "--root", str(root)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"demo {command} exited {result.returncode}:\n{result.stdout[-3000:]}")
    return time.perf_counter() - started


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        root = Path(tmp)
        (root / "dags").symlink_to(REPO / "dags")
        (root / "plugins").symlink_to(REPO / "plugins")
        env = {**os.environ, "LOCALCLOUD_PORT": str(free_port()), "AIRFLOW_PORT": str(free_port())}
        try:
            fresh = _demo("up", root, env)
            again = _demo("up", root, env)
        finally:
            _demo("down", root, env)
    return [
        Figure("demo", "make demo, fresh state (install and MNIST cached)", "s", [fresh], target="<= 240"),
        Figure("demo", "make demo again, nothing new (no duplicate work)", "s", [again]),
    ]
