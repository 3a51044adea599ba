"""Repository hygiene that CI must enforce: lint, nothing generated committed, entry points wired."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_SUFFIXES = (
    ".npz",
    ".npy",
    ".pkl",
    ".pkl.gz",
    ".onnx",
    ".pt",
    ".pth",
    ".tar.gz",
    ".whl",
    ".db",
    ".sqlite",
)


def test_ruff_lint_and_format_find_nothing():
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--no-cache", str(ROOT)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_no_data_models_or_environments_are_tracked():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offending = [
        p
        for p in tracked
        if p.endswith(DATA_SUFFIXES) or p.split("/")[0] in {".venv", ".cache", ".localcloud", ".airflow"}
    ]
    assert offending == []
    too_big = [p for p in tracked if (ROOT / p).is_file() and (ROOT / p).stat().st_size > 2 * 2**20]
    assert too_big == []


def test_ci_runs_what_the_readme_tells_users_to_run():
    assert "make test" in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
