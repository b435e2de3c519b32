"""Options and helpers the commands share.

A search setting's option says what `SearchConfig` says of it, default included, read when the
help is shown: importing the searcher (and torch) at start-up would make every `--help` slow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from meet_milvus.context import current_settings


class LazyHelpOption(click.Option):
    """An option whose help is written when shown, by `lazy_help()`: the definitions it quotes
    may be slow to import."""

    def __init__(self, decls: list[str], *, lazy_help: Callable[[], str],
                 setting: str | None = None, **attrs: Any) -> None:  # fmt: skip
        super().__init__(decls, **attrs)
        self.lazy_help = lazy_help
        self.setting = setting  # the SearchConfig field it sets, if any

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self.lazy_help()
        return super().get_help_record(ctx)


def setting_help(setting: str, text: str | None = None) -> str:
    """The help of the option for the `SearchConfig` field `setting`: the field's description,
    or `text` whose `{field}` placeholders take the fields' defaults; then the setting's
    default as `[value]`."""
    from meet_milvus.search_config import SearchConfig

    fields = SearchConfig.model_fields
    described = fields[setting].description if text is None else text.format(
        **{name: field.default for name, field in fields.items()}
    )  # fmt: skip
    return f"{described} [{fields[setting].default}]"


def setting_option(*decls: str, setting: str, choices: list[str], text: str | None = None):
    """A `--flag` choosing among `choices` for the search setting `setting`; not given (None),
    the searcher keeps its default."""
    return click.option(*decls, cls=LazyHelpOption, type=click.Choice(choices),
                        lazy_help=lambda: setting_help(setting, text), setting=setting)  # fmt: skip


COLLECTION = click.option("--collection", required=True, help="gallery name in Milvus")
CHECKPOINT = click.option(
    "--checkpoint", type=click.Path(path_type=Path),
    help="trained MEET checkpoint dir [the one the gallery was made with]",
)  # fmt: skip
TIER = setting_option("--tier", setting="tier", choices=["local", "server"])
# Its own words: the field's also covers true and false, which are --no-rerank here.
RERANK = setting_option(
    "--rerank", setting="rerank", choices=["weighted", "reference"],
    text="re-ranking: similarity + alpha*consistency + beta*complementarity over the top z "
    "({z}), or MEET's reference rule (the top {reference_k_texts} / {reference_k_images} by "
    "reverse rank alone, searching captions / images)",
)  # fmt: skip
FILTER = setting_option("--filter", setting="filter", choices=["auto", "meet", "ann"])
HASH_MODE = setting_option("--hash-mode", setting="hash_mode", choices=["milvus", "client"])
PQ_MODE = setting_option("--pq-mode", setting="pq_mode", choices=["adc", "milvus"])
DENSE_INDEXES = click.Choice(["hnsw", "flat"], case_sensitive=False)
DENSE_INDEX = click.option(
    "--dense-index", type=DENSE_INDEXES, default="hnsw", show_default=True,
    help="a new gallery's index on its dense field in Milvus: hnsw serves the server-side ANN "
    "(--tier server); flat skips its build, for a gallery searched through its local tier",
)  # fmt: skip


def neighbours_option(text: str):
    """--neighbours, the k of a gallery's re-ranking statistics; not given (None): the
    writer's default."""

    def lazy_help() -> str:
        from meet_milvus.writer import DEFAULT_NEIGHBOURS

        return f"{text} [{DEFAULT_NEIGHBOURS}]"

    return click.option("--neighbours", type=int, cls=LazyHelpOption, lazy_help=lazy_help)


def given(**options: object) -> dict:
    """The options the user set (None: keep the searcher's default)."""
    return {k: v for k, v in options.items() if v is not None}


def open_searcher(collection: str, checkpoint: Path | None, **overrides: Any):
    """The searcher of `collection` with the command's settings; the name is checked before
    connecting and loading the model."""
    from meet_milvus.gallery_layout import check_gallery_name
    from meet_milvus.searcher import MeetSearcher

    check_gallery_name(collection)
    return MeetSearcher(collection, checkpoint=checkpoint, settings=current_settings(), **overrides)
