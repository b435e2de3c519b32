"""A screenshot of the search page with real results, for the README (from the repository's
root, with Playwright and Chromium installed as for the browser test):

    python -m tests.tools.screenshot --collection demo --out docs/serve.png \\
        --query "an apple on a white background"

Starts the service on a free loopback port, types the query into the page in headless
Chromium (see browser.py), waits for every thumbnail to load, and saves a full-page PNG.
Settings come from MEET_* variables / the TOML file, as for every command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from meet_milvus.errors import MeetError, ParameterError
from meet_milvus.searcher import MeetSearcher
from meet_milvus.web.app import create_app
from meet_milvus.web.run import serving
from tests.tools.browser import chromium_missing, chromium_page, search_text


def take(
    searcher: object,
    out: Path,
    query: str,
    k: int = 10,
    image: Path | None = None,
    diagnostics: bool = False,
) -> Path:
    """Saves the page after `query` (and, with `image`, after uploading it) to `out` (PNG)."""
    check_out(out)
    with serving(create_app(searcher)) as url, chromium_page() as page:
        search_text(page, url, query, k=k, diagnostics=diagnostics)
        if image is not None:
            page.set_input_files("#upload", str(image))
            page.wait_for_selector("ol.captions li", timeout=60_000)
        if diagnostics:
            page.eval_on_selector_all("details.stages", "ds => ds.forEach(d => d.open = true)")
        page.screenshot(path=str(out), full_page=True)
    _shrink(out)
    return out


def _shrink(out: Path) -> None:
    """256 colours, no dithering: a page of flat colours and thumbnails stays sharp at about a
    third of the size, small enough to commit beside the README."""
    from PIL import Image

    with Image.open(out) as im:
        small = im.convert("RGB").quantize(256, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(out, "PNG", optimize=True)


def check_out(out: Path) -> Path:
    if out.suffix.lower() != ".png":
        raise ParameterError(f"--out {out}: give a .png path")
    if not out.parent.is_dir():
        raise ParameterError(f"--out {out}: folder {out.parent} not found")
    return out


@click.command()
@click.option("--collection", required=True, help="gallery name in Milvus, e.g. demo")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG to write")
@click.option("--query", default="an apple on a white background", show_default=True)
@click.option("-k", "k", default=10, show_default=True, help="results")
@click.option("--image", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="then upload this image (captions instead of thumbnails)")  # fmt: skip
@click.option("--diagnostics", is_flag=True, help="show the per-stage ranks")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="[the gallery's]")
def main(collection, out, query, k, image, diagnostics, checkpoint) -> None:
    """Screenshot of `meet-milvus serve`'s page with the results of QUERY."""
    check_out(out)  # before the model load, as is the browser check
    if reason := chromium_missing():
        raise ParameterError(reason)
    searcher = MeetSearcher(collection, checkpoint=checkpoint)
    take(searcher, out, query, k=k, image=image, diagnostics=diagnostics)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    try:
        main.main(standalone_mode=False)
    except MeetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
