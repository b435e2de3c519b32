"""The README's two set-up commands: CI runs the test one verbatim."""

import re
from pathlib import Path

import pytest
import tomllib

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)?\n(.+?)\n```", section, re.S)


def test_readme_has_exactly_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands)


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = next(c for c in _setup_commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def _extras(command: str) -> set[str]:
    found = re.search(r'-e "?\.(?:\[([\w,]*)\])?"?', command)
    assert found, f"no editable install of the project in: {command}"
    return set(filter(None, (found.group(1) or "").split(",")))


def test_each_command_installs_the_extras_it_uses():
    """The main job trains (examples/demo.sh runs meet-train), and so do the tests
    (tests/plugins/model.py): both install the `train` extra; the tests need `dev` too."""
    main_job, tests = _setup_commands()
    assert "meet-train" in (ROOT / "examples" / "demo.sh").read_text()
    assert "train" in _extras(main_job)
    assert {"dev", "train"} <= _extras(tests)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("tensorboard") for d in project["optional-dependencies"]["train"])
    assert not any(d.startswith("tensorboard") for d in project["dependencies"])
