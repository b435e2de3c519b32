"""Files written whole or not at all, folders swapped in finished, JSON state files, and files
only their user may read (the embedded server's credential and specs, the web service's access
token)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(path: Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary sibling of `path` to write; renamed over `path` when the block ends without
    an error (readers see the old or the new file, never half of one), removed otherwise.
    `mode` sets the permissions before the rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder `tmp` at `target`, removing any folder there first. Not atomic
    (a folder cannot be renamed over a non-empty one): callers hold a lock, or readers look for
    a file that marks the folder complete."""
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` (mode 0600) atomically."""
    with replacing(path) as tmp:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a stale tmp keeps its old mode through O_CREAT
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)


def read_json(path: Path) -> Any:
    """The JSON value in `path` (UTF-8; a leading byte-order mark, which some Windows editors
    write, is skipped). Raises OSError, UnicodeDecodeError or ValueError (JSON errors are
    ValueErrors), or RecursionError for nesting too deep: each caller words the failure for its
    own file."""
    return json.loads(path.read_text(encoding="utf-8-sig"))


def private_dir(path: Path) -> None:
    """`path` and its missing parents made; `path` itself 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)


def read_record(path: Path) -> dict:
    """The JSON object in `path`, or {} when the file is missing, unreadable, torn or holds
    anything else: for state files, where each of those means "nothing recorded"."""
    try:
        found = read_json(path)
    except (OSError, ValueError):  # a UnicodeDecodeError is a ValueError too
        return {}
    return found if isinstance(found, dict) else {}


def private_tree(directory: Path) -> None:
    """Everything under `directory` private to its user: 0700 folders, 0600 files (symbolic
    links are left alone, and so is what cannot be changed)."""
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            with contextlib.suppress(OSError):
                if not os.path.islink(p := os.path.join(root, name)):
                    os.chmod(p, 0o700)
        for name in files:
            with contextlib.suppress(OSError):
                if not os.path.islink(p := os.path.join(root, name)):
                    os.chmod(p, os.stat(p).st_mode & 0o700)
