"""The Milvus binary and libraries of the PyPI package `milvus`, unpacked into the cache dir and
checked, before each launch, to be what the package shipped and no one else could have planted.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import lzma
import os
import shutil
import stat
from pathlib import Path

from meet_milvus.config import DEFAULT_HOME
from meet_milvus.errors import ServerUnavailableError
from meet_milvus.files import read_record, write_private

# sha256 of the unpacked server per package content: outside the cache, which a config names.
BINARY_HASHES = DEFAULT_HOME / "milvus-binaries.json"


def package_dir() -> Path:
    spec = importlib.util.find_spec("milvus")
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailableError(
            "embedded Milvus: the package 'milvus' (2.3.5) is not installed"
        )
    return Path(spec.submodule_search_locations[0])


def package_version() -> str:
    return importlib.metadata.version("milvus")


def binaries(cache_dir: Path) -> Path:
    """The package's Milvus binary and libraries, unpacked once per version into the cache.

    What is run must be what the package shipped and can have been put there by no one else:
    every folder and file from the cache dir down is the user's and writable by no other account
    (`_check_owned`), and the files hash as the package's own did when unpacked (recorded in the
    user's home, `BINARY_HASHES`, not in the cache); anything else is unpacked again.
    """
    target = cache_dir / "milvus" / package_version() / "bin"
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_owned(cache_dir, target)
    packed = sorted((package_dir() / "data" / "bin").glob("*.lzma"))
    key = hashlib.sha256(json.dumps(_hash_files(packed), sort_keys=True).encode()).hexdigest()
    expected = _owned_record(BINARY_HASHES).get(key)
    if _unpacked_match(target, expected):
        return target
    files = _unpack(packed, target, cache_dir)
    record = _owned_record(BINARY_HASHES)
    BINARY_HASHES.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(BINARY_HASHES, json.dumps({**record, key: files}, indent=2))
    if not _unpacked_match(target, files):
        raise ServerUnavailableError(
            f"embedded Milvus: {target} does not hold what the package 'milvus' shipped "
            f"(changed while it was unpacked?); remove it to unpack the server again"
        )
    return target


def _unpack(packed: list[Path], target: Path, cache_dir: Path) -> dict[str, str]:
    """Unpack the package's files into `target`; their names and sha256 hashes."""
    # A folder of its own, renamed into place (`files.replacing` renames files, not folders).
    tmp = target.with_name(f"bin.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o755, parents=True)
        _check_owned(cache_dir, tmp)
        files = {}
        for source in packed:
            unpacked = tmp / source.name.removesuffix(".lzma")
            digest = hashlib.sha256()
            with lzma.open(source) as src, unpacked.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
            unpacked.chmod(0o755)
            files[unpacked.name] = digest.hexdigest()
        if "milvus" not in files:
            raise ServerUnavailableError(f"embedded Milvus: no Milvus binary in {packed[0].parent}")
        shutil.rmtree(target, ignore_errors=True)  # what was there did not match
        with contextlib.suppress(OSError):  # another process may have won the race
            tmp.rename(target)
        return files
    except OSError as e:
        raise ServerUnavailableError(
            f"embedded Milvus: cannot unpack the server into {target} ({e})"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _owned_record(path: Path) -> dict:
    """`path`'s JSON object when the file is this user's and writable by no one else, else {}."""
    try:
        info = path.lstat()
    except OSError:
        return {}
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return {}
    return read_record(path)


def _check_owned(cache_dir: Path, target: Path) -> None:
    """Refuse to run anything under `target` unless every existing folder and file from
    `cache_dir` down to it (and in it) is this user's and writable by no one else."""
    cache_dir, target = cache_dir.absolute(), target.absolute()
    chain = [p for p in (*reversed(target.parents), target) if p.is_relative_to(cache_dir)]
    if target.is_dir():
        chain += sorted(target.iterdir())
    for path in chain:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ServerUnavailableError(
                f"embedded Milvus: cannot check {path} ({e.strerror})"
            ) from None
        why = None
        if stat.S_ISLNK(info.st_mode):
            why = "is a symbolic link"
        elif info.st_uid != os.getuid():
            why = f"belongs to uid {info.st_uid}"
        elif info.st_mode & 0o022:
            why = f"is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
        if why:
            raise ServerUnavailableError(
                f"embedded Milvus: {path} {why}, so the server binary under it could have been "
                f"planted; refused to run it (make the cache dir yours and not group/other-"
                f"writable, or set cache_dir to one that is)"
            )


def _hash_files(paths: list[Path]) -> dict[str, str]:
    found = {}
    for path in paths:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        found[path.name] = digest.hexdigest()
    return found


def _unpacked_match(target: Path, files: object) -> bool:
    """Whether `target` holds exactly `files` (name -> sha256), no more, no less."""
    if not isinstance(files, dict) or not target.is_dir():
        return False
    try:
        present = sorted(target.iterdir())
        return {p.name for p in present} == set(files) and _hash_files(present) == files
    except OSError:
        return False
