"""`meet-milvus server start|stop|status|rotate-credentials`: the embedded Milvus server."""

from __future__ import annotations

import sys
import time

import click

from meet_milvus.config import redact_uri
from meet_milvus.context import Context, pass_ctx
from meet_milvus.errors import MeetError, ParameterError
from meet_milvus.inputs import check_seconds
from meet_milvus.server import (
    CONNECT_TIMEOUT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    EmbeddedServer,
    ServerStatus,
    connect,
    server_version,
)


@click.group()
def server() -> None:
    """Manage the embedded Milvus server (used when no --uri is set)."""


@server.command()
@click.option("--timeout", default=START_TIMEOUT, show_default=True, help="seconds to wait")
@pass_ctx
def start(ctx: Context, timeout: float) -> None:
    """Start the embedded server in the background, or report the one running."""
    embedded = _embedded(ctx, "start")
    timeout = _seconds(timeout)
    before = embedded.status()
    began = time.monotonic()
    found = embedded.start(timeout=timeout)
    if before.running:
        click.echo(f"already running: {_describe(found)}")
    else:
        click.echo(f"started in {time.monotonic() - began:.1f} s: {_describe(found)}")
    _details(found)


@server.command()
@click.option("--timeout", default=STOP_TIMEOUT, show_default=True, help="seconds before SIGKILL")
@pass_ctx
def stop(ctx: Context, timeout: float) -> None:
    """Stop the embedded server."""
    pid = _embedded(ctx, "stop").stop(timeout=_seconds(timeout))
    click.echo(f"stopped embedded Milvus (pid {pid})" if pid else "embedded Milvus is not running")


@server.command()
@click.option("--timeout", default=CONNECT_TIMEOUT, show_default=True, help="seconds to wait")
@pass_ctx
def status(ctx: Context, timeout: float) -> None:
    """Print the server's version and address; exit 1 when it is not running."""
    settings = ctx.settings
    timeout = _seconds(timeout)
    if not settings.embedded:
        try:
            version = server_version(connect(settings, timeout=timeout))
        except MeetError as e:
            click.echo(str(e), err=True)
            sys.exit(1)
        click.echo(f"Milvus {version} at {redact_uri(settings.milvus_uri)} (configured URI)")
        return
    found = EmbeddedServer(settings).status()
    if found.running:
        click.echo(f"running: {_describe(found)}")
    elif found.pid:
        click.echo(f"not answering yet: pid {found.pid}, address {found.uri}")
    else:
        click.echo(f"embedded Milvus is not running (data dir {found.directory})")
    _details(found)
    if not found.running:
        sys.exit(1)


@server.command("rotate-credentials")
@click.option("--timeout", default=START_TIMEOUT, show_default=True, help="seconds to wait")
@pass_ctx
def rotate_credentials(ctx: Context, timeout: float) -> None:
    """Give the embedded server's root user a new generated password.

    It is stored in the data dir (mode 0600), where this project's commands find it; a process
    connected before the rotation is refused from then on. Starts the server if needed.
    """
    embedded = _embedded(ctx, "rotate-credentials")
    path = embedded.rotate_credentials(timeout=_seconds(timeout))
    click.echo(f"new credential stored in {path}")


def _embedded(ctx: Context, action: str) -> EmbeddedServer:
    settings = ctx.settings
    if not settings.embedded:
        raise ParameterError(
            f"server {action}: a Milvus URI is configured ({redact_uri(settings.milvus_uri)}); "
            f"this command manages only the embedded server"
        )
    return EmbeddedServer(settings)


def _seconds(timeout: float) -> float:
    # Checked before anything starts: a start that cannot wait would stop what it launched.
    return check_seconds(timeout, "--timeout")


def _describe(found: ServerStatus) -> str:
    return f"Milvus {found.version} at {found.uri} (pid {found.pid})"


def _details(found: ServerStatus) -> None:
    click.echo(f"  data: {found.directory}")
    click.echo(f"  log:  {found.log}")
    if found.network == "isolated":
        click.echo("  network: its own; only its port on 127.0.0.1 reaches it, from this account")
    elif found.network == "host":
        click.echo("  network: this machine's; Milvus listens on all interfaces, exposed")
    credentials = found.directory / "credentials.json"
    if found.network and credentials.is_file():
        click.echo(f"  credentials: {credentials} (used by this project's commands)")
