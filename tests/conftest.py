"""Shared pytest configuration. Fixtures live in tests/fixtures/, one module per area."""

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.model",
    "tests.fixtures.localcloud",
    "tests.fixtures.plugin_aws",
]
