"""`meet-milvus server start|stop|status`: the embedded Milvus server."""

import click


@click.group()
def server() -> None:
    """Manage the embedded Milvus server."""
