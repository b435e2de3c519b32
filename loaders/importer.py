"""Images with captions into a data set: a Karpathy split file or a JSONL/CSV manifest read and
checked, its images through the grid-feature extractor, its splits written (`meet-milvus data
import`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from meet_milvus.config import Settings
from meet_milvus.errors import DataSetError, ParameterError
from meet_milvus.inputs import check_data_name
from meet_milvus.model.features import GridFeatureExtractor
from meet_milvus_loaders.precomp import available_splits, write_split
from meet_milvus_loaders.raw import RawSplit, read_karpathy, read_manifest_splits, to_split

KARPATHY_DEFAULT = ("train", "dev", "test")  # the splits a Karpathy file gives unless named


@dataclass(frozen=True)
class ImportReport:
    """What `import_data_set` wrote."""

    name: str
    root: Path  # the data set's folder in the data dir
    rows: list[dict]  # per split written: split, images, captions (its features are not kept)
    has_dev: bool  # meet-train needs a dev split (it keeps the epoch best on dev)


def read_source(
    source: str | Path,
    name: str | None = None,
    image_root: Path | None = None,
    splits: Sequence[str] = (),
    ratios: Sequence[float] | None = None,
    seed: int = 0,
    allow_outside: bool = False,
    max_captions: int | None = 5,
) -> list[RawSplit]:
    """The splits of `source` (a Karpathy .json, else a manifest) named in `splits` (each once;
    none: Karpathy's train/dev/test, a manifest's every split), files checked, nothing
    extracted."""
    source = Path(source)
    if name is not None:
        check_data_name(name, "data set")  # before reading anything
    splits = tuple(dict.fromkeys(splits))  # a split named twice is written once
    if source.suffix.lower() == ".json":
        if image_root is None:
            raise ParameterError(f"{source}: a Karpathy split file needs --images (the image "
                                 "folder)")  # fmt: skip
        if ratios is not None:
            raise ParameterError(f"{source}: a Karpathy split file has its splits; no "
                                 "--split-ratios")  # fmt: skip
        return [
            read_karpathy(source, image_root, sp, name=name, max_captions=max_captions,
                          allow_outside=allow_outside)  # fmt: skip
            for sp in (splits or KARPATHY_DEFAULT)
        ]
    raws = read_manifest_splits(source, name=name, image_root=image_root, ratios=ratios,
                                seed=seed, allow_outside=allow_outside)  # fmt: skip
    found = [r.split for r in raws]
    missing = [sp for sp in splits if sp not in found]
    if missing:
        raise DataSetError(
            f"{source}: no split '{missing[0]}' (it has {', '.join(found)}); "
            "a manifest's splits come from its split column or --split-ratios"
        )
    return [r for r in raws if not splits or r.split in splits]


def import_data_set(
    settings: Settings,
    source: str | Path,
    name: str | None = None,
    *,
    batch_size: int = 32,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **reading: object,
) -> ImportReport:
    """Read `source` (`read_source`'s `reading` options), extract every image's grid features
    and write each split into the data dir; `log` hears each step."""
    say = log or (lambda _msg: None)
    raws = read_source(source, name=name, **reading)
    if name is None:
        say(f"data set name '{raws[0].name}' (from {Path(source).name}; --name sets another)")
    name = raws[0].name
    extractor = GridFeatureExtractor(device=settings.device, cache_dir=settings.cache_dir)
    rows, root = [], None
    for raw in raws:  # one split's features in memory at a time
        say(f"{raw.name}/{raw.split}: {raw.n_images} images")
        split = to_split(raw, extractor, batch_size=batch_size, progress=progress)
        root = write_split(settings.data_dir, split)
        rows.append({"split": split.split, "images": split.n_images,
                     "captions": split.n_captions})  # fmt: skip
    has_dev = "dev" in available_splits(settings.data_dir, name)
    return ImportReport(name, root, rows, has_dev)
