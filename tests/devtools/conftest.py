"""What the devtools tests share: a demo layout in a temporary root with free ports, and a
localcloud started in it the way ``make demo`` starts it."""

from __future__ import annotations

import socket

import pytest

from devtools.bootstrap import start_localcloud
from devtools.cli import down
from devtools.layout import Layout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def layout(tmp_path):
    layout = Layout(root=tmp_path, localcloud_port=free_port(), airflow_port=free_port())
    yield layout
    down(layout)  # whatever a failing test left running


@pytest.fixture
def running_localcloud(layout):
    start_localcloud(layout)
    return layout
