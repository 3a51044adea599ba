"""Shared pytest configuration. Fixtures live in tests/fixtures/, one module per area."""

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
