"""`meet-milvus serve`: one warm `MeetSearcher` behind a JSON API and a web page."""

from __future__ import annotations

import contextlib
import math
import sys
import time

import click

from meet_milvus.commands.options import CHECKPOINT, HASH_MODE, given, open_searcher
from meet_milvus.context import current_settings
from meet_milvus.errors import MeetError


@click.command("serve")
@click.option("--collection", required=True, help="gallery name in Milvus, e.g. demo")
@CHECKPOINT
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--no-rerank", is_flag=True, help="re-ranking off by default (a request may ask)")
@HASH_MODE
@click.option("--max-upload-mb", default=10.0, show_default=True, type=click.FloatRange(0.01),
              help="largest image upload")  # fmt: skip
def serve(collection, checkpoint, host, port, no_rerank, hash_mode, max_upload_mb) -> None:
    """Serve searches of a gallery: a web page at / and a JSON API (/openapi.json describes it)."""
    from meet_milvus.web.run import bind, is_loopback, serve, url_of

    if not math.isfinite(max_upload_mb):  # click's FloatRange lets NaN and inf through
        raise MeetError(f"--max-upload-mb: must be a number of megabytes, not {max_upload_mb}")
    # The port first: a port in use is found before the model load, not after it.
    sock = bind(host, port)
    try:
        from meet_milvus.web.app import create_app, warm_up
        from meet_milvus.web.auth import access_token

        token, token_file = access_token(current_settings().data_dir)
        if not is_loopback(host):
            click.echo(
                f"warning: listening on {host}: whoever holds the access token and reaches "
                "this port can query the gallery and see its images; traffic is not encrypted "
                "(put a TLS proxy in front)",
                err=True,
            )

        began = time.perf_counter()
        overrides = {"rerank": False} if no_rerank else {}
        searcher = open_searcher(collection, checkpoint, **overrides, **given(hash_mode=hash_mode))
        warm_up(searcher)
        app = create_app(searcher, token=token, max_upload=int(max_upload_mb * 1024 * 1024))
        url = url_of(sock)
        click.echo(
            f"serving '{collection}' at {url} (ready in "
            f"{time.perf_counter() - began:.1f} s; Ctrl-C stops)",
            err=True,
        )
        # The link with the token goes to a person at a terminal, never into a log file.
        shown = token if sys.stderr.isatty() else f"<the token in {token_file}>"
        click.echo(
            f"open {url}/#token={shown} (scripts: 'Authorization: Bearer <token>')", err=True
        )
        # uvicorn shuts down cleanly on Ctrl-C and re-raises it, or returns, depending on when
        # the signal came: either way the service stopped as asked.
        with contextlib.suppress(KeyboardInterrupt):
            serve(app, sock, log_level="warning")
        click.echo("stopped", err=True)
    finally:
        sock.close()
