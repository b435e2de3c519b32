"""What `meet-milvus index` takes in: folders of photos, image files, globs, and manifests whose
rows may lack captions (and splits), turned into `NewItem`s with stable external ids.

    folder     walked recursively; every file with an image suffix; external id: the path
               relative to the folder (`dogs/1.jpg`)
    file       one image; external id: its name
    glob       `"~/Pictures/**/*.jpg"`: every match; external id: the path relative to the
               glob's fixed part
    manifest   .jsonl / .csv rows {"id"?, "image"?, "captions"? | "caption"?}: an image with its
               captions, an image alone, or captions alone (an `id` then needed); external id:
               `id`, else the image path as listed
"""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from meet_milvus.errors import DataSetError
from meet_milvus.writer import NewItem
from meet_milvus_loaders.raw import _caption, _image_path, _read_text, jsonl_objects, row_captions

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv")


def collect(paths: Sequence[str | Path], allow_outside: bool = False) -> list[NewItem]:
    """The items named by `paths` (folders, image files, globs, manifests), in a stable order;
    DataSetError names a path that is none of those."""
    items: list[NewItem] = []
    for given in paths:
        text = str(given)
        path = Path(text).expanduser()
        if any(c in text for c in "*?[") and not path.exists():
            items += _glob(os.path.expanduser(text))
        elif path.is_dir():
            items += [NewItem(f.relative_to(path).as_posix(), image=f) for f in _walk(path)]
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            items += list(_manifest(path, allow_outside))
        elif path.is_file():
            items.append(NewItem(path.name, image=path))
        elif path.exists():
            raise DataSetError(f"{path}: not a folder, an image file or a manifest")
        else:
            raise DataSetError(f"{path}: no such file or folder")
    return items


def _walk(root: Path) -> list[Path]:
    """Image files under `root`, sorted; hidden folders and files skipped, links not followed
    out of the folder."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            f = Path(folder) / name
            if not name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                found.append(f)
    return found


def _glob(pattern: str) -> list[NewItem]:
    """Files matching `pattern`; external ids relative to its part before the first wildcard."""
    parts = Path(pattern).parts
    wild = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))
    fixed = Path(*parts[:wild]) if wild else Path(".")
    matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
    return [NewItem(m.relative_to(fixed).as_posix() if m.is_relative_to(fixed) else m.name,
                    image=m) for m in matches if m.is_file()]  # fmt: skip


def _manifest(path: Path, allow_outside: bool) -> Iterator[NewItem]:
    rows = _csv(path) if path.suffix.lower() == ".csv" else _jsonl(path)
    for where, ident, image, captions in rows:
        caps = tuple(c for c in (_caption(c, f"{path}: {where}") for c in captions) if c)
        if not image and not caps:
            raise DataSetError(f"{path}: {where}: neither an image nor a caption")
        if not image and not ident:
            raise DataSetError(f"{path}: {where}: captions without an image need an 'id'")
        file = _image_path(path.parent, image, path, allow_outside) if image else None
        yield NewItem(ident or image, image=file, captions=caps)


def _jsonl(path: Path) -> Iterator[tuple[str, str, str, list[str]]]:
    for n, obj in jsonl_objects(path, "'id', 'image' or 'captions'"):
        caps = row_captions(path, n, obj, [])
        ident, image = obj.get("id", ""), obj.get("image") or ""
        if not isinstance(ident, str | int) or not isinstance(image, str):
            raise DataSetError(f"{path}: line {n}: 'id' and 'image' must be strings")
        yield f"line {n}", str(ident), image, caps


def _csv(path: Path) -> Iterator[tuple[str, str, str, list[str]]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        fields = reader.fieldnames or []
        caption_cols = [f for f in fields if f and f.strip().lower().startswith("caption")]
        if "image" not in fields and not ("id" in fields and caption_cols):
            raise DataSetError(
                f"{path}: the header needs an 'image' column, or 'id' and 'caption...' columns; "
                f"got {', '.join(fields) or 'nothing'}"
            )
        for row in reader:
            ident, image = (row.get("id") or "").strip(), (row.get("image") or "").strip()
            yield f"line {reader.line_num}", ident, image, [row.get(c) or "" for c in caption_cols]
    except csv.Error as e:
        raise DataSetError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
