"""The command line's help states defaults from their one definition: a search setting's from
`SearchConfig`, a global flag's meaning from `Settings`, the import's from the loaders; and
`eval` lists the methods `milvus_eval` runs."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from meet_milvus import milvus_eval
from meet_milvus.cli import cli
from meet_milvus.commands import evaluate
from meet_milvus.commands.options import LazyHelpOption
from meet_milvus.config import Settings
from meet_milvus.search_config import SearchConfig
from meet_milvus_loaders.raw import SPLIT_RATIOS

pytestmark = pytest.mark.unit


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(_commands(cli))


def _help(command: click.Command, option: click.Option) -> str:
    record = option.get_help_record(click.Context(command))
    return " ".join(record[1].split())


def test_every_option_for_a_search_setting_states_searchconfigs_default():
    fields = SearchConfig.model_fields
    seen = set()
    for path, command in COMMANDS.items():
        for option in command.params:
            if option.name not in fields:
                continue
            # An option named after a setting sets it: its help is SearchConfig's.
            assert isinstance(option, LazyHelpOption) and option.setting == option.name, path
            assert _help(command, option).endswith(f"[{fields[option.name].default}]"), path
            seen.add(option.name)
    assert seen == {"tier", "filter", "rerank", "hash_mode", "pq_mode"}


def test_the_help_follows_a_changed_default(monkeypatch):
    command = COMMANDS["search",]
    tier = next(o for o in command.params if o.name == "tier")
    assert _help(command, tier).endswith("[local]")
    monkeypatch.setattr(SearchConfig.model_fields["tier"], "default", "server")
    assert _help(command, tier).endswith("[server]")


def test_figures_quoted_in_a_settings_help_are_the_defined_ones():
    command = COMMANDS["eval", "run"]
    options = {o.name: _help(command, o) for o in command.params}
    k = SearchConfig.model_fields
    assert (f"the top {k['reference_k_texts'].default} / {k['reference_k_images'].default} "
            "by reverse rank") in options["rerank"]  # fmt: skip
    assert f"over the top z ({k['z'].default})" in options["rerank"]
    # The others say what SearchConfig says, and its default.
    for name in ("tier", "filter", "hash_mode", "pq_mode"):
        assert options[name] == f"{k[name].description} [{k[name].default}]"


def test_global_flags_say_what_the_settings_say():
    options = {o.name: o.help for o in cli.params}
    for name in ("milvus_uri", "milvus_db", "data_dir", "cache_dir", "device"):
        assert options[name] == Settings.model_fields[name].description


def test_import_help_states_the_loaders_defaults():
    command = COMMANDS["data", "import"]
    ratios = next(o for o in command.params if o.name == "ratios")
    assert f"[{','.join(f'{r:g}' for r in SPLIT_RATIOS)}]" in _help(command, ratios)


def test_eval_offers_the_methods_milvus_eval_runs():
    assert evaluate.METHODS == list(milvus_eval.METHODS)


def test_eval_has_one_subcommand_per_mode():
    result = CliRunner().invoke(cli, ["eval", "--help"])
    assert result.exit_code == 0
    assert set(evaluate.evaluate.commands) == {"run", "tune-rerank", "tune-pq", "pq-agreement"}
    for name in evaluate.evaluate.commands:
        assert name in result.output
    # The flags that chose a mode before are gone: a mode is a subcommand.
    flags = {o for p in evaluate.evaluate.commands["run"].params for o in p.opts}
    assert not flags & {"--tune", "--tune-pq", "--pq-agreement"}


def test_a_group_without_its_command_shows_its_help():
    # Before, `meet-milvus eval` printed the help as one error line with "\n" escapes.
    for group in (["eval"], ["data"], []):
        out = subprocess.run([sys.executable, "-m", "meet_milvus", *group], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        # click >= 8.2 shows it on stderr and exits 2; click 8.1 on stdout, exiting 0.
        shown = out.stderr or out.stdout
        assert out.returncode in (0, 2) and "Traceback" not in shown
        lines = shown.splitlines()
        assert lines[0].startswith("Usage: ") and "Commands:" in lines and "\\n" not in shown
        assert ("  tune-rerank " in shown) == (group == ["eval"])


def test_neighbours_help_states_the_writers_default():
    from meet_milvus.writer import DEFAULT_NEIGHBOURS

    for path, args in ((("load",), []), (("index",), ["photos/"])):
        command = COMMANDS[path]
        option = next(o for o in command.params if o.name == "neighbours")
        parsed = command.make_context(path[0], ["--collection", "g", *args]).params
        assert parsed["neighbours"] is None  # not given: the writer's default applies
        assert _help(command, option).endswith(f"[{DEFAULT_NEIGHBOURS}]")
