"""Shared pytest configuration. Fixtures live in tests/fixtures/, one module per area."""

pytest_plugins = [
    "tests.fixtures.data",
]
