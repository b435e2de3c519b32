"""Tux Paint's stamp collection (Debian package `tuxpaint-stamps-default`) as named real images.

Each stamp is a PNG (photo cut-out or drawing, transparent background) with a `.txt` beside it
whose first line describes it in English ("A male black rhino."). The package is fetched with
`apt-get download` and unpacked with `dpkg-deb -x` into the cache; nothing is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from meet_milvus.errors import DataSetError
from meet_milvus.files import replace_dir

PACKAGE = "tuxpaint-stamps-default"
STAMPS_SUBDIR = Path("usr/share/tuxpaint/stamps")
# Symbols, letters, numbers, money, chess pieces, music notation and road signs: not scenes.
EXCLUDED = ("symbols", "town/roadsigns")
ARTICLES = ("a", "an")
UNCOUNTED = ("the", "some", "two", "our")  # phrases that name a thing but cannot be counted
VERBS = {"is", "are", "was", "lets", "resembles", "carries", "carry", "contains", "gets"}
PREPOSITIONS = {"of", "with", "in", "inside", "from", "at", "for", "on", "called", "like"}
MAX_WORDS = 6
# A short description starting with these is a remark ("This shell...", "Enter the cave."),
# not a name.
NOT_NAMES = {
    "this",
    "that",
    "these",
    "those",
    "it",
    "it's",
    "we",
    "you",
    "enter",
    "eat",
    "remember",
    "with",
    "down",
    "because",
    "here",
    "there",
}


@dataclass(frozen=True)
class Stamp:
    """One stamp: its image, its real description, and the noun phrase that names it."""

    key: str  # path below the stamps folder, without suffix: "animals/mammals/rhino_black"
    path: Path  # the PNG
    description: str  # the .txt file's first line, as written
    phrase: str  # "a male black rhino" (article lower-cased), used to compose captions
    plural: str | None  # "male black rhinos"; None when the phrase cannot be counted

    @property
    def category(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def group(self) -> str:
        """Stamps of one group are the same caption: they always fall in the same split."""
        return self.phrase.lower()


def fetch_package(cache_dir: Path) -> Path:
    """The unpacked stamps folder under `cache_dir`, downloading and unpacking once."""
    home = Path(cache_dir).expanduser() / "tuxpaint"
    root = home / "root"
    if (root / ".complete").is_file():
        return root / STAMPS_SUBDIR
    home.mkdir(parents=True, exist_ok=True)
    deb = _download(home)
    tmp = home / f"root.partial.{os.getpid()}"  # two builds at once never share a half tree
    shutil.rmtree(tmp, ignore_errors=True)
    _run(
        ["dpkg-deb", "-x", str(deb), str(tmp)],
        f"could not unpack {deb} (delete it to download again)",
    )
    if not (tmp / STAMPS_SUBDIR).is_dir():
        raise DataSetError(f"{deb}: no {STAMPS_SUBDIR} inside; not the {PACKAGE} package?")
    (tmp / ".complete").write_text(deb.name + "\n")
    if (root / ".complete").is_file():  # another build finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        replace_dir(tmp, root)  # a folder there is an interrupted unpack
    return root / STAMPS_SUBDIR


def _download(home: Path) -> Path:
    debs = sorted(home.glob(f"{PACKAGE}_*.deb"))
    if debs:
        return debs[-1]
    if shutil.which("apt-get") is None:
        raise DataSetError(
            f"could not download Debian package {PACKAGE}: apt-get not found "
            f"(put the .deb in {home} by hand)"
        )
    # apt-get download writes into the working directory; a scratch folder keeps half-written
    # files out of `home`, where a later run would take them for complete.
    scratch = home / f"download.partial.{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    result = _apt_download(scratch)
    if result.returncode != 0 and _needs_update(result.stderr):
        # A fresh machine has no package lists yet.
        update = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        if update.returncode != 0:
            raise DataSetError(
                f"could not download Debian package {PACKAGE}: apt-get update "
                f"failed ({_last_line(update.stderr)})"
            )
        result = _apt_download(scratch)
    if result.returncode != 0:
        raise DataSetError(
            f"could not download Debian package {PACKAGE}: {_last_line(result.stderr)}"
        )
    got = sorted(scratch.glob(f"{PACKAGE}_*.deb"))
    if not got:
        raise DataSetError(f"could not download Debian package {PACKAGE}: apt-get wrote no .deb")
    deb = home / got[-1].name
    got[-1].replace(deb)
    shutil.rmtree(scratch, ignore_errors=True)
    return deb


def _apt_download(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "download", PACKAGE], cwd=cwd, capture_output=True, text=True)


def _needs_update(stderr: str) -> bool:
    return any(
        s in stderr for s in ("Unable to locate package", "no installation candidate", "404")
    )


def _run(cmd: list[str], what: str) -> None:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise DataSetError(f"{what}: {cmd[0]} not found") from None
    if result.returncode != 0:
        raise DataSetError(f"{what}: {_last_line(result.stderr)}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    return (errors or lines or ["no message"])[-1]


def load_stamps(stamps_dir: Path) -> list[Stamp]:
    """Every usable stamp, sorted by key: a PNG with a description that names a thing.

    Left out: the excluded categories, stamps drawn only as SVG, and descriptions that are
    sentences or exclamations rather than names ("Eat your broccoli!").
    """
    stamps_dir = Path(stamps_dir)
    if not stamps_dir.is_dir():
        raise DataSetError(f"{stamps_dir}: stamps folder not found")
    stamps = []
    for txt in sorted(stamps_dir.rglob("*.txt")):
        key = txt.relative_to(stamps_dir).with_suffix("").as_posix()
        png = txt.with_suffix(".png")
        if key.startswith(EXCLUDED) or not png.is_file():
            continue
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
        description = " ".join(lines[0].split()) if lines else ""
        named = noun_phrase(description)
        if named is not None:
            stamps.append(Stamp(key, png, description, *named))
    if not stamps:
        raise DataSetError(f"{stamps_dir}: no stamps with descriptions found")
    return stamps


def noun_phrase(description: str) -> tuple[str, str | None] | None:
    """("a male black rhino", "male black rhinos") for "A male black rhino.", or None when the
    description is not a name. The plural is None for phrases that cannot be counted."""
    text = re.sub(r"\s*\([^)]*\)", "", description)  # "(a female peafowl, or peacock)"
    parts = re.split(r"\s*[—–]\s*|\s+-\s+", text)  # "Mercury—the planet closest to the Sun."
    text = re.split(r"(?<=[.!?])\s", parts[0].strip())[0].rstrip(".!?…").strip()
    words = text.split()
    if not words:
        return None
    # "A candy cane is a traditional Christmas treat": keep the subject.
    for i, w in enumerate(words):
        if w in VERBS:
            words = words[:i] if i <= 4 else []
            break
    # "A spiny lobster, from the Hawaiian islands" but not "A ripe, red tomato".
    for i, w in enumerate(words):
        if w.endswith(",") and i >= 2:
            words = words[: i + 1]
            words[-1] = words[-1].rstrip(",")
            break
    if not 1 <= len(words) <= MAX_WORDS or any(not re.search(r"\w", w) for w in words):
        return None
    first = words[0].lower()
    if first == "another":  # "Another tombstone." names a tombstone
        first = "a"
    if first in ARTICLES and len(words) >= 2:
        words[0] = first
        return " ".join(words), _pluralize(words[1:])
    if first in UNCOUNTED and len(words) >= 2:
        words[0] = first
        return " ".join(words), None
    if len(words) > 3 or first in NOT_NAMES or re.search(r"[!?]", description):
        return None
    # A bare name: "Circus tent" reads "circus tent" inside a sentence; "Santa Claus", "Eddie the
    # Helicopter" and "Mercury" (followed by an apposition) are proper names and keep capitals.
    proper = len(parts) > 1 or any(w[:1].isupper() for w in words[1:])
    if not proper:
        words[0] = words[0][:1].lower() + words[0][1:]
    return " ".join(words), None


def _pluralize(words: list[str]) -> str:
    """ "head of lettuce" -> "heads of lettuce", "spider playing soccer" -> "spiders playing
    soccer", "chick hatched from an egg" -> "chicks hatched ...", "male black rhino" -> "male
    black rhinos"."""
    head = len(words) - 1
    for i, w in enumerate(words[1:-1], start=1):
        if w.lower() in PREPOSITIONS:
            head = i - 2 if i >= 2 and words[i - 1].endswith("ed") else i - 1
            break
        if i == 1 and w.endswith("ing"):  # a participle with an object, not "sailing ship"
            head = 0
            break
    words = list(words)
    words[head] = plural_noun(words[head])
    return " ".join(words)


_IRREGULAR = {
    "mouse": "mice",
    "louse": "lice",
    "tooth": "teeth",
    "foot": "feet",
    "goose": "geese",
    "child": "children",
    "person": "people",
    "ox": "oxen",
    "sheep": "sheep",
    "deer": "deer",
    "fish": "fish",
    "bison": "bison",
    "moose": "moose",
    "shrimp": "shrimp",
    "series": "series",
    "species": "species",
    "aircraft": "aircraft",
    "potato": "potatoes",
    "tomato": "tomatoes",
    "mango": "mangoes",
    "dingo": "dingoes",
    "hero": "heroes",
    "echo": "echoes",
    "volcano": "volcanoes",
    "leaf": "leaves",
    "knife": "knives",
    "wolf": "wolves",
    "calf": "calves",
    "half": "halves",
    "loaf": "loaves",
    "scarf": "scarves",
    "shelf": "shelves",
    "life": "lives",
    "wife": "wives",
    "elf": "elves",
    "cactus": "cacti",
}


def plural_noun(word: str) -> str:
    """English plural of one noun, keeping its capitalisation and any closing quote."""
    stripped = word.rstrip("'’”\"")
    if stripped != word:
        return plural_noun(stripped) + word[len(stripped) :]
    lower = word.lower()
    for singular, plural in _IRREGULAR.items():
        if lower == singular or (
            lower.endswith(singular) and singular in ("mouse", "louse", "fish", "tooth")
        ):
            return word[: len(word) - len(singular)] + _match_case(word[-len(singular) :], plural)
    if lower.endswith("man") and lower not in ("german", "human", "shaman"):
        return word[:-3] + _match_case(word[-3:], "men")
    if re.search(r"[^aeiou]y$", lower):
        return word[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", lower):
        return word + "es"
    return word + "s"


def _match_case(original: str, replacement: str) -> str:
    return replacement.capitalize() if original[:1].isupper() else replacement
