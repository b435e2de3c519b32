"""Checks of what users hand in (texts, names, counts): one home, one-line MeetErrors.

Each check returns the value it accepted, so a caller can write `name = check_data_name(name, ...)`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meet_milvus.errors import ParameterError

# A data set or split name becomes part of a file name under the data dir: no separators, no
# leading dot, nothing a shell or a file system treats specially.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value: Any, what: str) -> str:
    """A non-empty str of valid Unicode. A lone surrogate is what a command-line argument that is
    not UTF-8 becomes (Python's surrogateescape): refused, since any guess at its meaning would
    search for something the user did not type."""
    if not isinstance(value, str):
        raise ParameterError(f"{what}: expected text, got {type(value).__name__}")
    if not value.strip():
        raise ParameterError(f"{what}: the text is empty")
    bad = _SURROGATE.search(value)
    if bad:
        code, at = ord(bad.group()), bad.start() + 1
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape maps byte b (>= 0x80) to U+DC00 + b
            raise ParameterError(
                f"{what}: not UTF-8 (byte 0x{code - 0xDC00:02x} at character {at}); "
                "is the terminal's encoding UTF-8?"
            )
        raise ParameterError(
            f"{what}: not valid Unicode (lone surrogate U+{code:04X} at character {at})"
        )
    if "\0" in value:
        raise ParameterError(f"{what}: contains a NUL character")
    return value


def check_data_name(value: Any, what: str) -> str:
    """A data set or split name: letters, digits, '_', '-', '.', not starting with '.' or '-'
    (it becomes a file name under the data dir, so '/' and '..' cannot appear)."""
    if not isinstance(value, str):
        raise ParameterError(f"{what} name: expected text, got {type(value).__name__}")
    if not _NAME.fullmatch(value):
        shown = value if len(value) <= 60 else value[:60] + "..."
        raise ParameterError(
            f"{what} name {shown!r}: use letters, digits, '_', '-' and '.' (at most 100, "
            "starting with a letter, digit or '_')"
        )
    return value


def check_count(value: Any, what: str) -> int:
    """A positive integer (a batch size, a number of results)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ParameterError(f"{what}={value!r}: must be a positive integer")
    return int(value)


def check_seconds(value: Any, what: str) -> float:
    """A positive, finite number of seconds."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise ParameterError(f"{what}: must be a positive number of seconds, not {value}")
    return float(value)


def is_file(path: str | Path) -> bool:
    """Path.is_file, False where the file system cannot even look (a name too long, a NUL)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def check_output_path(path: str | Path, flag: str, suffixes: Sequence[str]) -> Path:
    """A file to write (a picture): one of `suffixes`, in an existing folder, not a folder
    itself. Checked before the work that produces it, so a typo costs no search or evaluation."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        *most, last = suffixes
        kinds = f"{', '.join(most)} or {last}" if most else last
        raise ParameterError(f"{flag} {path}: give a {kinds} path")
    if not path.parent.is_dir():
        raise ParameterError(f"{flag} {path}: folder {path.parent} not found")
    if path.is_dir():
        raise ParameterError(f"{flag} {path}: is a folder")
    return path
