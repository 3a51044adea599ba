"""Where the demo keeps its state, and its ports."""

from __future__ import annotations

import pytest

from devtools.layout import DemoError, Layout


def test_a_port_setting_that_is_not_a_port_is_named():
    with pytest.raises(DemoError, match="AIRFLOW_PORT='80a80'"):
        Layout.from_env(".", {"AIRFLOW_PORT": "80a80"})
