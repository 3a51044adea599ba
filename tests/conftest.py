"""Shared pytest configuration. Fixtures live in tests/fixtures/, one module per area.

Test tiers (the README's "Tests" section says what runs where):

- ``make test`` runs everything.
- ``make test-fast`` (``pytest --fast``) runs the quick tier: no training and no servers. It
  deselects the ``slow``, ``e2e``, ``browser`` and ``chaos`` tests, and guards the rest: a test
  that listens on a port or launches a training run, a localcloud or an Airflow process fails
  with a message saying to mark it ``slow`` (Python child processes get the same guard through a
  ``sitecustomize`` on their path). So a missing marker cannot hide in the quick tier.
- A test that uses a fixture which trains or starts servers (``SLOW_FIXTURES``) is marked
  ``slow`` here, so its own marker cannot be forgotten.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess

import pytest

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.model",
    "tests.fixtures.localcloud",
    "tests.fixtures.plugin_aws",
    "tests.fixtures.browser",
    "tests.fixtures.stack",
    # Last: it points AIRFLOW_HOME at a temporary directory before any test module imports airflow.
    "tests.fixtures.airflow",
]

# Markers the quick tier leaves out.
NOT_FAST = ("slow", "e2e", "browser", "chaos")
# Fixtures that train a model or start a server: whoever uses one is slow.
SLOW_FIXTURES = frozenset(
    {"trained_model_dir", "localcloud", "running_localcloud", "demo_stack", "browser", "chromium"}
)
# Programs the quick tier never starts (an argument of the command line, or its file name).
SLOW_COMMANDS = frozenset(
    {"train.py", "sagemaker_training", "localcloud", "airflow", "postgres", "pg_ctl", "initdb", "chromium"}
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast",
        action="store_true",
        help="the quick tier: no training, no servers (make test-fast)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if not config.getoption("--fast"):
        return
    kept, dropped = [], []
    for item in items:
        (dropped if any(item.get_closest_marker(name) for name in NOT_FAST) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


class SlowInFastTier(AssertionError):
    """A test in the quick tier did what only ``slow`` tests may do."""


@pytest.fixture(autouse=True)
def _fast_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if not request.config.getoption("--fast"):
        return
    name = request.node.nodeid

    def listen(self, *args, **kwargs):
        raise SlowInFastTier(f"{name} listens on a port: mark it slow (it starts a server)")

    real_popen_init = subprocess.Popen.__init__

    def popen_init(self, args, *rest, **kwargs):
        words = [os.fsdecode(args)] if isinstance(args, str | bytes) else [os.fsdecode(w) for w in args]
        if kwargs.get("shell"):
            words = shlex.split(words[0])
        if SLOW_COMMANDS & {os.path.basename(word) for word in words}:
            raise SlowInFastTier(
                f"{name} runs {shlex.join(words)}: mark it slow (it trains or starts servers)"
            )
        real_popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(socket.socket, "listen", listen)
    monkeypatch.setattr(subprocess.Popen, "__init__", popen_init)
    # Python child processes get the same guard (``python -c "...LocalCloud(...).start()"``).
    guard_dir = request.getfixturevalue("_child_listen_guard")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [guard_dir, os.environ.get("PYTHONPATH")])))


CHILD_GUARD = """\
import socket


def _listen(self, *args, **kwargs):
    raise OSError("make test-fast: this process listens on a port; mark the test that started it slow")


socket.socket.listen = _listen
"""


@pytest.fixture(scope="session")
def _child_listen_guard(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("fast-tier-guard")
    (directory / "sitecustomize.py").write_text(CHILD_GUARD)
    return str(directory)
