"""`meet-milvus`: the runtime command line (server, data, load, search, eval, serve)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from meet_milvus.commands import data, evaluate, gallery, retrieval, serve, server
from meet_milvus.config import Settings
from meet_milvus.context import Context
from meet_milvus.errors import MeetError, ParameterError


def _described(field: str) -> str:
    """The help of a global flag: the description of the setting it overrides."""
    return Settings.model_fields[field].description


@click.group()
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file")
@click.option("--uri", "milvus_uri", help=_described("milvus_uri"))
@click.option(
    "--token", "milvus_token", help="Milvus token (visible to all users: prefer the next)"
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="file holding the Milvus token or user:password (or MEET_MILVUS_TOKEN)",
)
@click.option("--db", "milvus_db", help=_described("milvus_db"))
@click.option("--data-dir", type=click.Path(path_type=Path), help=_described("data_dir"))
@click.option("--cache-dir", type=click.Path(path_type=Path), help=_described("cache_dir"))
@click.option("--device", help=_described("device"))
@click.version_option(package_name="meet-milvus")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, token_file: Path | None, **overrides) -> None:
    """MEET image-text retrieval on Milvus."""
    if overrides.get("milvus_token") is not None:
        if token_file is not None:
            raise click.UsageError("give --token or --token-file, not both")
        click.echo(
            "warning: --token puts the credential on the command line, where every user of "
            "this machine can read it (/proc/<pid>/cmdline); use --token-file or "
            "MEET_MILVUS_TOKEN",
            err=True,
        )
    if token_file is not None:
        overrides["milvus_token"] = read_token_file(token_file)
    ctx.obj = Context(config_file, overrides)


cli.add_command(server.server)
cli.add_command(data.data)
cli.add_command(evaluate.evaluate)
for command in (*retrieval.COMMANDS, *gallery.COMMANDS):
    cli.add_command(command)
cli.add_command(serve.serve)


# click >= 8.2 raises this for a group named without a command (8.1 prints the help itself).
_NO_COMMAND = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main() -> None:
    """Entry point: user errors print one line and exit 2, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except MeetError as e:
        click.echo(f"error: {_one_line(str(e))}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except _NO_COMMAND as e:  # a group named without its command: its help, as click shows it
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:
        # One line like every other error, not click's usage block.
        where = f" (see: {e.ctx.command_path} --help)" if e.ctx else ""
        click.echo(f"error: {_one_line(e.format_message())}{where}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {_one_line(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:  # the file system said no (a name too long, a full disk): one line too
        click.echo(f"error: {_one_line(str(e))}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:
        from pymilvus.exceptions import MilvusException  # only now: `--help` stays instant

        if not isinstance(e, MilvusException):
            raise
        # A Milvus error that no layer below put in words: still one line, with what to do.
        click.echo(f"error: Milvus: {_one_line(e.message)} (check the server: `meet-milvus "
                   "server status` or its log, then retry)", err=True)  # fmt: skip
        sys.exit(2)


def read_token_file(path: Path) -> str:
    """The token in `path` (its first line), for --token-file."""
    try:
        with path.open(encoding="utf-8") as fh:
            token = fh.readline(4096).strip()
    except OSError as e:
        raise ParameterError(f"--token-file {path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ParameterError(f"--token-file {path}: not UTF-8 text") from None
    if not token:
        raise ParameterError(f"--token-file {path}: empty")
    return token


def _one_line(message: str) -> str:
    # A value quoted in a message may hold line breaks; the error stays one line.
    return message.replace("\r", "\\r").replace("\n", "\\n")
