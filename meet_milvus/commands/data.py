"""`meet-milvus data ...`: build and prepare data sets."""

import click


@click.group()
def data() -> None:
    """Build and prepare data sets."""
