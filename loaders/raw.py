"""Raw images with captions: Karpathy's JSON splits (COCO, Flickr30K) and plain manifests.

Both readers give a `RawSplit` (image files and their captions); `to_split` turns one into a
precomp `Split` by running the grid-feature extractor over the images.

Manifests:
  JSONL, one object a line: {"image": "dogs/1.jpg", "captions": ["A dog.", ...]}
         ("caption": "..." for a single one);
  CSV with a header: an `image` column and one or more columns whose names start with `caption`;
         rows naming the same image add to its captions.
  Either may give each row a `split` (field or column: train, dev (or val), test, ...); an image
  belongs to one split. Without one, `read_manifest_splits` cuts the images into train/dev/test
  by ratios, deterministically from a seed.
Relative image paths are taken from the manifest's folder, or from `image_root` when given.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meet_milvus.errors import DataSetError, ParameterError
from meet_milvus.files import read_json
from meet_milvus.inputs import check_data_name, check_text, is_file
from meet_milvus_loaders.precomp import Split

# Our split names -> Karpathy's. COCO's "restval" images train, as in VSE++/SCAN; "testall" is
# COCO's full 5K test set (its 1K folds come from `precomp.write_folds`).
KARPATHY_SPLITS = {
    "train": ("train", "restval"),
    "dev": ("val",),
    "test": ("test",),
    "testall": ("test",),
}
# Manifests without a split column: shares of the images in train, dev, test. Training needs dev
# (meet-train keeps the epoch that scores best on it).
SPLIT_RATIOS = (0.8, 0.1, 0.1)
RATIO_SPLITS = ("train", "dev", "test")
_SPLIT_ALIASES = {"val": "dev", "valid": "dev", "validation": "dev"}


@dataclass(frozen=True)
class RawSplit:
    """Image files and, for each, its captions (in order)."""

    name: str
    split: str
    image_paths: list[Path]
    captions: list[list[str]]

    def __post_init__(self) -> None:
        if len(self.image_paths) != len(self.captions):
            raise ValueError("one caption list per image")
        # Before any feature is extracted: both become file names under the data dir.
        check_data_name(self.name, "data set")
        check_data_name(self.split, "split")

    @property
    def n_images(self) -> int:
        return len(self.image_paths)


def read_karpathy(
    json_path: str | Path,
    image_root: str | Path,
    split: str,
    name: str | None = None,
    max_captions: int | None = 5,
    check_files: bool = True,
    allow_outside: bool = False,
) -> RawSplit:
    """Split `split` (train/dev/test/testall) of `dataset_coco.json` or `dataset_flickr30k.json`.

    Image paths are `image_root/filepath/filename` (COCO) or `image_root/filename` (Flickr30K);
    one leading outside `image_root` is refused unless `allow_outside`.
    `max_captions` keeps the first five captions of an image, as the paper's data does (a few
    COCO images have six or seven); None keeps all."""
    json_path, image_root = Path(json_path), Path(image_root)
    if split not in KARPATHY_SPLITS:
        raise DataSetError(
            f"{json_path}: unknown split '{split}' (one of {', '.join(KARPATHY_SPLITS)})"
        )
    data = _read_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataSetError(f"{json_path}: not a Karpathy split file (no 'images' list)")
    wanted = KARPATHY_SPLITS[split]
    paths, captions = [], []
    for i, record in enumerate(data["images"]):
        try:
            if record["split"] not in wanted:
                continue
            rel = Path(record.get("filepath", "")) / record["filename"]
            where = f"{json_path}: image record {i}"
            sentences = [_caption(s["raw"], where) for s in record["sentences"]]
        except (KeyError, TypeError, AttributeError) as e:
            raise DataSetError(f"{json_path}: image record {i} lacks {e}") from None
        sentences = [s for s in sentences if s][:max_captions]
        if not sentences:
            raise DataSetError(f"{json_path}: image record {i} ({rel}) has no captions")
        paths.append(_image_path(image_root, str(rel), json_path, allow_outside))
        captions.append(sentences)
    if not paths:
        raise DataSetError(f"{json_path}: no images in split '{split}' (Karpathy '{wanted[0]}')")
    if check_files:
        _check_exist(paths, json_path)
    if name is None:
        name = str(data.get("dataset") or json_path.stem.replace("dataset_", ""))
    return RawSplit(name, split, paths, captions)


def read_manifest(
    path: str | Path,
    split: str = "train",
    name: str | None = None,
    image_root: str | Path | None = None,
    check_files: bool = True,
    allow_outside: bool = False,
) -> RawSplit:
    """A JSONL or CSV manifest of image paths with one or more captions each, as split `split`:
    the rows of that split when the manifest has a split column, else all of it. Image paths
    leading outside the image folder (absolute, or with '..') are refused unless
    `allow_outside`."""
    path = Path(path)
    images = _manifest_images(path)
    if any(sp is not None for sp, _ in images.values()):
        images = {im: v for im, v in images.items() if v[0] == split}
        if not images:
            raise DataSetError(f"{path}: no images in split '{split}'")
    return _raw_split(path, images, split, name, image_root, check_files, allow_outside)


def read_manifest_splits(
    path: str | Path,
    name: str | None = None,
    image_root: str | Path | None = None,
    ratios: Sequence[float] | None = None,
    seed: int = 0,
    check_files: bool = True,
    allow_outside: bool = False,
) -> list[RawSplit]:
    """Every split of a manifest, disjoint by image: as its `split` column says, or, without one,
    its images cut into train/dev/test at `ratios` (default `SPLIT_RATIOS`; a 0 skips a split).

    The cut is by image (all of an image's captions go with it) in an order drawn from `seed`
    and each image's path, so it does not depend on the rows' order."""
    path = Path(path)
    images = _manifest_images(path)
    column = [sp for sp, _ in images.values() if sp is not None]
    if column and ratios is not None:
        raise DataSetError(
            f"{path}: has a split column; split ratios apply to manifests without one"
        )
    if column:
        assigned = {im: sp for im, (sp, _) in images.items()}
        names = list(dict.fromkeys(column))
    else:
        assigned = _ratio_split(path, list(images), ratios or SPLIT_RATIOS, seed)
        names = [sp for sp in RATIO_SPLITS if sp in assigned.values()]
    return [
        _raw_split(
            path,
            {im: v for im, v in images.items() if assigned[im] == sp},
            sp,
            name,
            image_root,
            check_files,
            allow_outside,
        )
        for sp in names
    ]


def _ratio_split(path: Path, images: list[str], ratios: Sequence[float], seed: int) -> dict:
    """image -> train/dev/test: counts from `ratios`, images ordered by a seeded hash."""
    if len(ratios) != len(RATIO_SPLITS) or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise DataSetError(f"split ratios {tuple(ratios)}: three shares (train, dev, test), >= 0")
    shares = np.asarray(ratios, dtype=np.float64) / sum(ratios)
    n = len(images)
    bounds = np.rint(n * np.cumsum(shares)).astype(np.int64)
    bounds[-1] = n
    counts = np.diff(bounds, prepend=0)
    for sp, share, count in zip(RATIO_SPLITS, shares, counts, strict=True):
        if share > 0 and count < 1:
            raise DataSetError(
                f"{path}: {n} images are too few for a {sp} share of {share:.2f} "
                "(give other split ratios or a split column)"
            )
    order = sorted(images, key=lambda im: hashlib.sha256(f"{seed}\0{im}".encode()).digest())
    which = np.searchsorted(bounds, np.arange(n), side="right")
    return {im: RATIO_SPLITS[w] for im, w in zip(order, which, strict=True)}


def _manifest_images(path: Path) -> dict[str, tuple[str | None, list[str]]]:
    """image -> (its split or None, its captions), in the manifest's order."""
    if not is_file(path):
        raise DataSetError(f"{path}: manifest not found")
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path)
    else:
        raise DataSetError(f"{path}: unknown manifest type (use .jsonl or .csv)")
    merged: dict[str, tuple[str | None, list[str]]] = {}
    first_split: str | None = None
    for n, (where, image, caps, split) in enumerate(rows):
        if not image:
            raise DataSetError(f"{path}: {where}: no image path")
        caps = [c for c in (_caption(c, f"{path}: {where}") for c in caps) if c]
        if not caps:
            raise DataSetError(f"{path}: {where}: no caption for {image}")
        split = _split_name(path, where, split)
        if n == 0:
            first_split = split
        elif (split is None) != (first_split is None):
            raise DataSetError(f"{path}: {where}: give every row a split or none")
        listed, captions = merged.setdefault(image, (split, []))
        if listed != split:
            raise DataSetError(
                f"{path}: {where}: {image} is listed in split '{listed}' and in '{split}' "
                "(an image belongs to one split)"
            )
        captions.extend(caps)
    if not merged:
        raise DataSetError(f"{path}: no images listed")
    return merged


def _split_name(path: Path, where: str, split: str | None) -> str | None:
    if split is None or not split.strip():
        return None
    split = _SPLIT_ALIASES.get(split.strip().lower(), split.strip())
    try:
        return check_data_name(split, "split")  # it becomes part of file names
    except ParameterError as e:
        raise DataSetError(f"{path}: {where}: {e}") from None


def _raw_split(
    path: Path,
    images: dict[str, tuple[str | None, list[str]]],
    split: str,
    name: str | None,
    image_root: str | Path | None,
    check_files: bool,
    allow_outside: bool = False,
) -> RawSplit:
    root = Path(image_root) if image_root else path.parent
    paths = [_image_path(root, p, path, allow_outside) for p in images]
    if check_files:
        _check_exist(paths, path)
    name = path.stem if name is None else name  # an empty --name is refused, not replaced
    return RawSplit(name, split, paths, [caps for _, caps in images.values()])


def jsonl_objects(path: Path, expected: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSONL file; DataSetError names the
    line that is not JSON or not an object (`expected` says what it should hold)."""
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataSetError(f"{path}: line {n}: not JSON ({e.msg})") from None
        except RecursionError:
            raise DataSetError(f"{path}: line {n}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise DataSetError(f"{path}: line {n}: expected an object with {expected}")
        yield n, obj


def row_captions(path: Path, n: int, obj: dict, missing: object) -> list[str]:
    """A JSONL row's captions (`captions`, or one `caption`); `missing` when it has none."""
    caps = obj.get("captions", obj.get("caption", missing))
    caps = [caps] if isinstance(caps, str) else caps
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise DataSetError(f"{path}: line {n}: 'captions' must be a list of strings")
    return caps


def _jsonl_rows(path: Path):
    for n, obj in jsonl_objects(path, "'image' and 'captions'"):
        caps = row_captions(path, n, obj, None)
        split = obj.get("split")
        if split is not None and not isinstance(split, str):
            raise DataSetError(f"{path}: line {n}: 'split' must be a string")
        yield f"line {n}", str(obj.get("image") or ""), caps, split


def _csv_rows(path: Path):
    # newline="": a quoted field keeps its line breaks (a caption over two lines stays one row).
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        fields = reader.fieldnames or []
        caption_cols = [f for f in fields if f and f.strip().lower().startswith("caption")]
        if "image" not in fields or not caption_cols:
            raise DataSetError(
                f"{path}: the header needs an 'image' column and a 'caption...' column, "
                f"got {', '.join(fields) or 'nothing'}"
            )
        for row in reader:
            yield (
                f"line {reader.line_num}",
                (row.get("image") or "").strip(),
                [row.get(c) or "" for c in caption_cols],
                row.get("split") if "split" in fields else None,
            )
    except csv.Error as e:  # e.g. a field over csv.field_size_limit() (128 KB)
        raise DataSetError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataSetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_json(path: Path) -> Any:
    """files.read_json, its failures worded as a data set's."""
    if not is_file(path):
        raise DataSetError(f"{path}: not found")
    try:
        return read_json(path)
    except UnicodeDecodeError as e:
        raise DataSetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataSetError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise DataSetError(f"{path}: JSON nested too deeply") from None
    except OSError as e:
        raise DataSetError(f"{path}: unreadable ({e.strerror})") from None


def _caption(text: str, where: str) -> str:
    """A caption with its whitespace (line breaks too) collapsed; "" when blank. NUL characters
    and lone surrogates (JSON "\\ud800" escapes) are refused: neither is text."""
    text = " ".join(text.split())
    return check_text(text, f"{where}: caption") if text else text


def _image_path(root: Path, listed: str, listed_in: Path, allow_outside: bool) -> Path:
    """`listed` under `root`. An absolute path or one climbing out with '..' is refused unless
    `allow_outside`: a manifest from elsewhere must not read any file on the machine."""
    if "\0" in listed:
        raise DataSetError(f"{listed_in}: image path {listed!r} contains a NUL character")
    rel = Path(listed)
    climbs = Path(os.path.normpath(rel)).parts[:1] == ("..",)
    # A symlink under the folder may lead anywhere: the real path is what counts.
    inside = not (rel.is_absolute() or climbs) and (root / rel).resolve().is_relative_to(
        root.resolve()
    )
    if not allow_outside and not inside:
        raise DataSetError(
            f"{listed_in}: image path {listed!r} leads outside the image folder {root}; "
            "allow it explicitly (--allow-outside-images)"
        )
    return root / rel


def _check_exist(paths: Sequence[Path], listed_in: Path) -> None:
    missing = [p for p in paths if not is_file(p)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataSetError(f"{missing[0]}: image file not found (listed in {listed_in}){more}")


def to_split(
    raw: RawSplit,
    extractor,
    batch_size: int = 32,
    progress: bool = True,
    dtype: type = np.float32,
) -> Split:
    """Extract grid features for `raw`'s images (a `GridFeatureExtractor`) into a `Split`."""
    features = extractor.extract(
        raw.image_paths, batch_size=batch_size, progress=progress, dtype=dtype
    )
    counts = [len(c) for c in raw.captions]
    return Split(
        name=raw.name,
        split=raw.split,
        images=features,
        captions=[c for caps in raw.captions for c in caps],
        caption_image=np.repeat(np.arange(raw.n_images, dtype=np.int64), counts),
        image_paths=[str(p) for p in raw.image_paths],
    )
