"""Shared fixtures live in tests/plugins/, one module per resource."""

pytest_plugins = ["tests.plugins.milvus", "tests.plugins.data", "tests.plugins.model"]
