"""Shared fixtures live in tests/plugins/, one module per resource.

Every test belongs to one tier, marked `unit` (no Milvus, no download, no training; the whole
tier runs in well under a minute: `pytest -m unit`) or `integration` (the embedded Milvus
server, the demo fixtures, training, anything slow). Collection fails on a test with no tier or
both, and on a unit test that asks for one of the integration fixtures below.
"""

import pytest

pytest_plugins = ["tests.plugins.milvus", "tests.plugins.data", "tests.plugins.model"]

TIERS = ("unit", "integration")
# Fixtures that start Milvus, build the demo set or train: never in a unit test.
INTEGRATION_FIXTURES = {
    "milvus_settings",
    "demo_data",
    "demo_checkpoint",
    "runtime_settings",
    "demo_gallery",
    "searcher",
    "split",
    "cli_flags",
    "secured",  # test_security's own server
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        if len(tiers) != 1:
            wrong.append(f"{item.nodeid}: tiers {tiers}; mark it with exactly one of {TIERS}")
        elif tiers == ["unit"] and (used := INTEGRATION_FIXTURES & set(item.fixturenames)):
            wrong.append(f"{item.nodeid}: a unit test uses {sorted(used)}; mark it integration")
    if wrong:
        raise pytest.UsageError("test tiers:\n" + "\n".join(wrong))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """A browser test that could not run is said at the end of the run, not only as one "s"."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = sorted({str(r.longrepr[2]) for r in skipped if "browser test" in str(r.longrepr)})
    if reasons:
        terminalreporter.write_sep("!", "THE BROWSER TEST DID NOT RUN", red=True, bold=True)
        for reason in reasons:
            terminalreporter.write_line(f"  {reason}", red=True)
        terminalreporter.write_line(
            "  the page was never opened in a browser: install Chromium (.ci/run does, as root)",
            red=True,
        )
