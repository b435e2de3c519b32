"""Raw images with captions: Karpathy's JSON splits (COCO, Flickr30K) and plain manifests.

Both readers give a `RawSplit` (image files and their captions); `to_split` turns one into a
precomp `Split` by running the grid-feature extractor over the images.

Manifests:
  JSONL, one object a line: {"image": "dogs/1.jpg", "captions": ["A dog.", ...]}
         ("caption": "..." for a single one);
  CSV with a header: an `image` column and one or more columns whose names start with `caption`;
         rows naming the same image add to its captions.
Relative image paths are taken from the manifest's folder, or from `image_root` when given.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meet_milvus.errors import DataSetError
from meet_milvus_loaders.precomp import Split

# Our split names -> Karpathy's. COCO's "restval" images train, as in VSE++/SCAN; "testall" is
# COCO's full 5K test set (its 1K folds come from `precomp.write_folds`).
KARPATHY_SPLITS = {
    "train": ("train", "restval"),
    "dev": ("val",),
    "test": ("test",),
    "testall": ("test",),
}


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
) -> RawSplit:
    """Split `split` (train/dev/test/testall) of `dataset_coco.json` or `dataset_flickr30k.json`.

    Image paths are `image_root/filepath/filename` (COCO) or `image_root/filename` (Flickr30K).
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
            sentences = [" ".join(s["raw"].split()) for s in record["sentences"]]
        except (KeyError, TypeError, AttributeError) as e:
            raise DataSetError(f"{json_path}: image record {i} lacks {e}") from None
        sentences = [s for s in sentences if s][:max_captions]
        if not sentences:
            raise DataSetError(f"{json_path}: image record {i} ({rel}) has no captions")
        paths.append(image_root / rel)
        captions.append(sentences)
    if not paths:
        raise DataSetError(f"{json_path}: no images in split '{split}' (Karpathy '{wanted[0]}')")
    if check_files:
        _check_exist(paths, json_path)
    name = name or str(data.get("dataset") or json_path.stem.replace("dataset_", ""))
    return RawSplit(name, split, paths, captions)


def read_manifest(
    path: str | Path,
    split: str = "train",
    name: str | None = None,
    image_root: str | Path | None = None,
    check_files: bool = True,
) -> RawSplit:
    """A JSONL or CSV manifest of image paths with one or more captions each."""
    path = Path(path)
    if not path.is_file():
        raise DataSetError(f"{path}: manifest not found")
    root = Path(image_root) if image_root else path.parent
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path)
    else:
        raise DataSetError(f"{path}: unknown manifest type (use .jsonl or .csv)")
    merged: dict[str, list[str]] = {}
    for where, image, caps in rows:
        if not image:
            raise DataSetError(f"{path}: {where}: no image path")
        caps = [" ".join(c.split()) for c in caps if c and c.strip()]
        if not caps:
            raise DataSetError(f"{path}: {where}: no caption for {image}")
        merged.setdefault(image, []).extend(caps)
    if not merged:
        raise DataSetError(f"{path}: no images listed")
    paths = [root / p for p in merged]
    if check_files:
        _check_exist(paths, path)
    return RawSplit(name or path.stem, split, paths, list(merged.values()))


def _jsonl_rows(path: Path):
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataSetError(f"{path}: line {n}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataSetError(f"{path}: line {n}: expected an object with 'image' and 'captions'")
        caps = obj.get("captions", obj.get("caption"))
        caps = [caps] if isinstance(caps, str) else caps
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise DataSetError(f"{path}: line {n}: 'captions' must be a list of strings")
        yield f"line {n}", str(obj.get("image") or ""), caps


def _csv_rows(path: Path):
    reader = csv.DictReader(_read_text(path).splitlines())
    fields = reader.fieldnames or []
    caption_cols = [f for f in fields if f and f.strip().lower().startswith("caption")]
    if "image" not in fields or not caption_cols:
        raise DataSetError(
            f"{path}: the header needs an 'image' column and a 'caption...' column, "
            f"got {', '.join(fields) or 'nothing'}"
        )
    for n, row in enumerate(reader, start=2):
        yield (
            f"line {n}",
            (row.get("image") or "").strip(),
            [row.get(c) or "" for c in caption_cols],
        )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataSetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_json(path: Path):
    if not path.is_file():
        raise DataSetError(f"{path}: not found")
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataSetError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None


def _check_exist(paths: Sequence[Path], listed_in: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
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
