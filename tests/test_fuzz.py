"""Bad input, generated: the Python API and the CLI answer each case correctly or refuse it with
one clean line (a MeetError; exit code != 0 and one stderr line from the CLI), never with a
traceback, and never write outside the data and cache dirs.

Seeded and bounded: CASES says how many cases each entry point gets. The unit tests need no
Milvus (the searcher's cascade is replaced by a stub that returns k hits a query, so they check
the argument handling in front of it); the integration tests run their cases against the
session's embedded Milvus and the demo gallery, and check that no case stops that server.

    python -m tests.test_fuzz --report             # prints "N cases, T tracebacks (...)"
    python -m tests.test_fuzz --report -m unit     # the unit tier alone, without Milvus
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import random
import re
import struct
import sys
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from meet_milvus.errors import MeetError
from meet_milvus.inputs import is_file

SEED = 20261202
# Generated cases per entry point (the README quotes TOTAL_CASES).
CASES = {
    "search": 300,
    "search_image": 300,
    "settings": 300,
    "manifest": 300,
    "features": 150,
    "serve": 150,
    "cli": 300,
    "api_milvus": 100,
    "cli_milvus": 120,
}
TOTAL_CASES = sum(CASES.values())
TALLY: Counter = Counter()  # cases run and outcomes, for --report

FEATURE_DIM = 1280


# -- outcomes ---------------------------------------------------------------------------------


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", result), ("error", one-line message) or ("traceback", formatted traceback)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # progress bars, warnings
            return "ok", call()
    except MeetError as e:
        return "error", str(e)
    except Exception:
        return "traceback", traceback.format_exc()


class Fuzz:
    """Runs cases and collects what went wrong; `check()` fails the test with every problem."""

    def __init__(self, entry: str) -> None:
        self.entry = entry
        self.problems: list[str] = []
        self.outcomes: Counter = Counter()

    def case(
        self, label: str, fn: Callable, *args: Any, expect: str = "either", **kwargs: Any
    ) -> tuple[str, Any]:
        """Run fn(*args, **kwargs) as one case; `expect` "ok" or "error" when it is known."""
        kind, value = outcome(lambda: fn(*args, **kwargs))
        self.outcomes[kind] += 1
        if kind == "traceback":
            self.problems.append(f"{label}: traceback\n{value}")
        elif kind == "error" and ("\n" in value or "\r" in value or not value.strip()):
            self.problems.append(f"{label}: error not one line: {value!r}")
        elif expect != "either" and kind != expect:
            self.problems.append(f"{label}: expected {expect}, got {kind}: {str(value)[:300]}")
        return kind, value

    def fail(self, label: str, why: str) -> None:
        self.problems.append(f"{label}: {why}")

    def check(self) -> None:
        TALLY["cases"] += sum(self.outcomes.values())
        TALLY["tracebacks"] += self.outcomes["traceback"]
        TALLY["refused"] += self.outcomes["error"]
        TALLY["answered"] += self.outcomes["ok"]
        shown = "\n".join(self.problems[:10])
        assert not self.problems, f"{self.entry}: {len(self.problems)} problems\n{shown}"


# -- an isolated world: HOME, cwd, data and cache dirs; nothing written outside the last two ---


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home, self.cwd = root / "home", root / "cwd"
        # Deep, so that a name climbing out with '..' lands inside `root`, where it is seen.
        self.data = root / "deep" / "er" / "data"
        self.cache = root / "cache"
        self.inputs = root / "inputs"  # what the test writes for the code to read
        for d in (self.home, self.cwd, self.data, self.cache, self.inputs):
            d.mkdir(parents=True, exist_ok=True)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        out = {}
        for path in self.root.rglob("*"):
            if any(path.is_relative_to(d) for d in (self.data, self.cache, self.inputs)):
                continue
            with contextlib.suppress(OSError):
                st = path.lstat()
                out[str(path.relative_to(self.root))] = (st.st_size, st.st_mtime_ns)
        return out


@contextlib.contextmanager
def isolated(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """HOME, cwd and MEET_* pointing into `world`; fails if anything outside its data and cache
    dirs changed."""
    for key in list(os.environ):
        if key.startswith("MEET_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(world.home))
    monkeypatch.setenv("MEET_DATA_DIR", str(world.data))
    monkeypatch.setenv("MEET_CACHE_DIR", str(world.cache))
    monkeypatch.setenv("MEET_DEVICE", "cpu")
    monkeypatch.chdir(world.cwd)
    before = world.snapshot()
    yield world
    after = world.snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"written outside the data dir: {changed[:10]}"


@pytest.fixture()
def world(tmp_path, monkeypatch) -> Iterator[World]:
    with isolated(World(tmp_path / "world"), monkeypatch) as w:
        yield w


# -- generated values -------------------------------------------------------------------------

GOOD_TEXTS = [
    "a tiger next to a flower",
    "two happy lions",
    "café, naïve, ÿ",
    "日本語のテキスト",
    "a cat 🐯 on a mat",
    "  padded  ",
    "line one\nline two",
    "word " * 300,  # longer than the model reads: truncated, with a warning
]
BAD_TEXTS = ["", "   ", "\n\t", "tiger \udcff", "\ud800", "caf\udce9", "a\0b"]
NOT_TEXT = [None, 5, 3.5, True, b"bytes", object(), {"text": "x"}, np.float32(1.0)]
GOOD_K = [1, 2, 5, 10, 16384, np.int64(3)]
BAD_K = [0, -1, 1.5, "5", True, None, 16385, 10**9, float("nan")]


def valid_text(t: Any) -> bool:
    if not isinstance(t, str) or not t.strip() or "\0" in t:
        return False
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in t)


def random_text(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(GOOD_TEXTS)
    if roll < 0.6:
        return rng.choice(BAD_TEXTS)
    if roll < 0.7:
        return rng.choice(NOT_TEXT)
    alphabet = "abc xyz\t\n.,'\"é漢🐯\0\ud800\udcff\U0010ffff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def random_k(rng: random.Random) -> Any:
    return rng.choice(GOOD_K) if rng.random() < 0.7 else rng.choice(BAD_K)


def good_k(k: Any) -> bool:
    return any(k is g for g in GOOD_K) or (type(k) is int and 1 <= k <= 16384)


def png(width: int, height: int, mode: int = 2) -> bytes:
    """A PNG header claiming width x height (no pixel data: enough to trip the bomb check)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def image_files(folder: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (path, is a readable image) for good and bad image files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    files = {}
    for i in range(3):
        path = folder / f"good{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
        files[path.name] = (path, True)
    bad = {
        "bomb.png": png(20000, 20000),  # 400 M pixels: PIL raises
        "bomb_warn.png": png(10000, 10000, 0),  # 100 M pixels: PIL only warns
        "not_image.png": b"hello, not an image",
        "empty.png": b"",
        "truncated.png": (folder / "good0.png").read_bytes()[:60],
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)
        files[name] = (folder / name, False)
    (folder / "a_folder.png").mkdir(exist_ok=True)
    files["a_folder.png"] = (folder / "a_folder.png", False)
    files["missing.png"] = (folder / "missing.png", False)
    files["long.png"] = (folder / ("x" * 300 + ".png"), False)  # the OS refuses to look
    return files


# -- a searcher without Milvus ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    """A real (untrained, small) MEET model: what is checked in front of it does not depend on
    its weights. One torch thread: on a busy machine many threads only wait for each other."""
    import torch

    from meet_milvus.model.config import ModelConfig
    from meet_milvus.model.meet_model import MeetModel
    from meet_milvus.model.network import build_net
    from meet_milvus.model.quantization import Quantizers
    from meet_milvus.model.vocab import Vocabulary
    from meet_milvus_training.config import TrainConfig
    from meet_milvus_training.trainer import SHAPE_FIELDS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    vocab = Vocabulary.build(GOOD_TEXTS)
    train = TrainConfig(embed_size=64, H=64, M=8, K=4, text_encoder="bigru", word_dim=32)
    config = ModelConfig(
        H=64, M=8, K=4, embed_dim=64, feature_dim=FEATURE_DIM, text_encoder="bigru",
        vocab_size=len(vocab), max_text_len=40, train=train.model_dump(),
        **{k: getattr(train, k) for k in SHAPE_FIELDS},
    )  # fmt: skip
    quantizers = Quantizers(config.H, config.M, config.K, config.pq_layout)
    yield MeetModel(build_net(config, vocab).eval(), quantizers, config, "cpu")
    torch.set_num_threads(threads)


def stub_searcher(model):
    """A MeetSearcher whose cascade is a stub returning k hits a query."""
    import threading

    from meet_milvus.batching import Batcher
    from meet_milvus.results import Hit
    from meet_milvus.search_config import SearchConfig
    from meet_milvus.searcher import MAX_BATCH_CALLS, MeetSearcher

    searcher = object.__new__(MeetSearcher)
    searcher.model, searcher.config = model, SearchConfig()
    searcher._model_lock = threading.Lock()
    searcher._calls = Batcher(searcher._answer, MAX_BATCH_CALLS)

    def run(queries, gallery, k=10, diagnostics=False, config=None):
        hit = Hit(id=0, score=1.0, source="s", external_id="e", modality=gallery, image=0)
        return [[hit] * int(k) for _ in range(len(queries))]

    searcher.run = run
    return searcher


def answer_shape(result: Any, single: bool, n: int, k: int) -> str | None:
    """Why `result` is not one list of k hits (single) or n such lists; None when it is."""
    rows = [result] if single else result
    if not isinstance(rows, list) or len(rows) != (1 if single else n):
        return f"expected {'one' if single else n} result lists, got {type(result).__name__}"
    if any(not isinstance(r, list) or len(r) != k for r in rows):
        return f"expected {k} hits a query"
    return None


@pytest.mark.unit
def test_search_texts(world, tiny_model):
    rng, fuzz = random.Random(SEED), Fuzz("search")
    searcher = stub_searcher(tiny_model)
    for _ in range(CASES["search"]):
        roll = rng.random()
        if roll < 0.45:
            text, single = random_text(rng), True
        elif roll < 0.9:
            text, single = [random_text(rng) for _ in range(rng.randint(0, 3))], False
            text = tuple(text) if rng.random() < 0.2 else text
        else:
            text, single = rng.choice([None, 7, b"tiger", {"a"}, np.array(["a"])]), True
        k = random_k(rng)
        texts = [text] if single else list(text)
        shape_ok = isinstance(text, str) or isinstance(text, list | tuple)
        valid = shape_ok and good_k(k) and all(valid_text(t) for t in texts)
        kind, value = fuzz.case(f"search({text!r:.60}, k={k!r})", searcher.search, text, k)
        if valid and kind == "error":
            fuzz.fail(f"search({text!r:.60}, k={k!r})", f"valid input refused: {value}")
        if not valid and kind == "ok":
            fuzz.fail(f"search({text!r:.60}, k={k!r})", "bad input answered")
        if kind == "ok" and (why := answer_shape(value, single, len(texts), int(k))):
            fuzz.fail(f"search({text!r:.60}, k={k!r})", why)
    # The surrogate a non-UTF-8 argument becomes is named, with its byte.
    _, message = fuzz.case("surrogate", searcher.search, "tiger \udcff", expect="error")
    assert "byte 0xff at character 7" in message
    fuzz.check()


def random_features(rng: random.Random) -> tuple[Any, str]:
    """(features, expected outcome) for one image or a batch."""
    gen = np.random.default_rng(rng.randrange(2**32))
    r = rng.choice([1, 7, 49])
    good = gen.standard_normal((r, FEATURE_DIM)).astype(np.float32)
    choices: list[tuple[Any, str]] = [
        (good, "ok"),
        (good[0], "ok"),  # pooled (D,)
        (good.astype(np.float16), "ok"),
        (good.astype(np.float64) * 100, "ok"),
        (np.stack([good, good]), "ok"),  # a batch (N, R, D)
        (good[None, None].repeat(2, axis=1), "ok"),  # (1, 2, R, D): one image of 2R regions
        (np.where(gen.random(good.shape) < 0.01, np.nan, good), "error"),
        (np.where(gen.random(good.shape) < 0.01, np.inf, good), "error"),
        (np.full_like(good, -np.inf), "error"),
        (np.full_like(good, 1e38), "error"),  # finite, but its square is not
        (np.zeros((0, FEATURE_DIM), np.float32), "error"),  # no regions
        (gen.standard_normal((r, 1000)).astype(np.float32), "error"),  # wrong dim
        (gen.standard_normal((r, 0)).astype(np.float32), "error"),
        (np.array(3.0), "error"),
        (good.astype(np.int32), "error"),
        (good.astype(np.complex64), "error"),
        (np.array([["a"] * FEATURE_DIM]), "error"),
        ([good, np.concatenate([good, good])], "error"),  # different shapes in one batch
        ([good, "x.png"], "error"),  # a mix
        ([], "ok"),
        (None, "error"),
        (42, "error"),
        (b"\x89PNG", "error"),
    ]
    return rng.choice(choices)


@pytest.mark.unit
def test_search_image_features_and_files(world, tiny_model):
    rng, fuzz = random.Random(SEED + 1), Fuzz("search_image")
    searcher = stub_searcher(tiny_model)
    files = image_files(world.inputs / "images")
    names = sorted(files)
    for _ in range(CASES["search_image"]):
        k = rng.choice(GOOD_K[:4]) if rng.random() < 0.85 else rng.choice(BAD_K)
        if rng.random() < 0.75:
            image, expect = random_features(rng)
        else:  # files: few good ones (each runs EfficientNet), most bad
            path, good = files[rng.choice(names)]
            if good and rng.random() < 0.7:
                path, good = files["not_image.png"]
            image, expect = (str(path) if rng.random() < 0.5 else path), ("ok" if good else "error")
        expect = expect if good_k(k) else "error"
        label = f"search_image({type(image).__name__} {getattr(image, 'shape', image)!r:.60})"
        kind, value = fuzz.case(label, searcher.search_image, image, k, expect=expect)
        if kind == "ok":
            single = isinstance(image, str | Path) or (
                isinstance(image, np.ndarray) and image.ndim < 3
            )
            n = 0 if single else len(image)
            if why := answer_shape(value, single, n, int(k)):
                fuzz.fail(label, why)
    _, message = fuzz.case("bomb", searcher.search_image, files["bomb.png"][0], expect="error")
    assert "too many pixels" in message
    fuzz.check()


@pytest.mark.unit
def test_serve_requests(world, tiny_model):
    from fastapi.testclient import TestClient

    from meet_milvus.web.app import create_app

    rng, fuzz = random.Random(SEED + 8), Fuzz("serve")
    client = TestClient(create_app(stub_searcher(tiny_model)), raise_server_exceptions=False)
    files = image_files(world.inputs / "images")
    uploads = {name: path.read_bytes() for name, (path, _) in files.items() if is_file(path)}

    def request(kind: str, payload: Any) -> tuple[int, dict]:
        if kind == "text":
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            r = client.post("/api/search", content=body,
                            headers={"content-type": "application/json"})  # fmt: skip
        else:
            name, k = payload
            r = client.post("/api/search/image", files={"file": (name, uploads[name])},
                            data={"k": str(k)})  # fmt: skip
        if r.status_code == 200:
            return 200, r.json()
        body = r.json()
        if r.status_code >= 500 or set(body) != {"error"} or "\n" in body["error"]:
            raise AssertionError(f"{r.status_code} {body}")  # reported as a traceback
        raise MeetError(body["error"])

    for _ in range(CASES["serve"]):
        roll = rng.random()
        if roll < 0.55:
            text, k = random_text(rng), rng.choice([1, 5, 0, -1, 101, "5", None, True, 2.5])
            if not isinstance(text, str | int | float | type(None)):  # what JSON carries
                text = repr(text)
            good = valid_text(text) and type(k) is int and 1 <= k <= 100
            fuzz.case(f"POST /api/search {text!r:.60} k={k!r}", request, "text",
                      {"text": text, "k": k}, expect="ok" if good else "error")  # fmt: skip
        elif roll < 0.7:
            body = rng.choice(
                [
                    b"[" * 60_000,
                    b"{",
                    b'{"text": "\\ud800"}',
                    b"\xff\xfe",
                    b'{"text": "a", "k": 1e400}',
                    b'{"text": ["a"]}',
                    b"",
                ]
            )
            fuzz.case(f"POST /api/search {body[:40]!r}", request, "text", body, expect="error")
        else:
            name = rng.choice(sorted(uploads))
            good = name.startswith("good") and rng.random() < 0.3
            name = name if good or not name.startswith("good") else "not_image.png"
            fuzz.case(f"upload {name}", request, "image", (name, 5),
                      expect="ok" if good else "error")  # fmt: skip
    fuzz.check()


# -- settings ---------------------------------------------------------------------------------

SETTING_KEYS = [
    "milvus_uri", "milvus_token", "milvus_db", "embedded_port", "data_dir", "cache_dir", "device",
    "text_model", "checkpoint", "log_level", "embedded_network", "embedded_gc_interval",
    "embedded_gc_drop_tolerance", "bogus_key", "DATA_DIR",
]  # fmt: skip
TOML_VALUES = [
    "true", "false", "0", "1", "19530", "-5", "65536", "99999999999999999999", "1.5", "19530.0",
    "nan", "inf", '""', '"   "', '"cpu"', '"cuda:0"', '"cuda:x"', '"http://h:19530"',
    '"http://u:p@h:1"', '"warning"', '"isolated"', '"/tmp/x"', '"~/x"', '"a\\u0000b"',
    '"\\ud800"', "[1, 2]", "{ a = 1 }", "1979-05-27", '"' + "x" * 5000 + '"',
]  # fmt: skip


def random_toml(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.08:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))  # binary
    if roll < 0.12:
        return ("a = " + "[" * 50_000 + "]" * 50_000).encode()  # deep
    if roll < 0.16:
        return rng.choice([b"meet = 5", b'meet = "abc"', b"[meet]\n[meet]", b"= x", b"\xef\xbb"])
    lines = [f"{rng.choice(SETTING_KEYS)} = {rng.choice(TOML_VALUES)}" for _ in range(3)]
    lines = list(dict(line.split(" = ", 1) for line in lines).items())
    text = "\n".join(f"{k} = {v}" for k, v in lines)
    return (("[meet]\n" if rng.random() < 0.3 else "") + text).encode()


@pytest.mark.unit
def test_settings_files_and_environment(world, monkeypatch):
    from meet_milvus.config import load_settings

    rng, fuzz = random.Random(SEED + 2), Fuzz("settings")
    path = world.inputs / "fuzz.toml"
    for _ in range(CASES["settings"]):
        content = random_toml(rng)
        path.write_bytes(content)
        label = f"toml {content[:80]!r}"
        kind, value = fuzz.case(label, load_settings, path)
        if kind == "error" and "fuzz.toml" not in value and "setting '" not in value:
            fuzz.fail(label, f"error names neither the file nor the key: {value}")
        if kind == "ok" and re.search(rb"^embedded_port = (true|false)$", content, re.M):
            fuzz.fail(label, "embedded_port = true accepted")
        if kind == "ok" and re.search(rb"^milvus_(uri|token|db) = (1|\[1, 2\])$", content, re.M):
            fuzz.fail(label, "a number or list accepted as text")
    # Environment variables and paths that are not files.
    for key, value in [
        ("MEET_EMBEDDED_PORT", v) for v in ("true", "x", "-1", "70000", "", "1e3")
    ] + [("MEET_DATA_DIR", ""), ("MEET_DEVICE", "gpu"), ("MEET_LOG_LEVEL", "loud")]:
        with monkeypatch.context() as m:
            m.setenv(key, value)
            fuzz.case(f"{key}={value!r}", load_settings, expect="error")
    for bad in ("/dev/zero", world.inputs, world.inputs / "missing.toml"):
        fuzz.case(f"config file {bad}", load_settings, bad, expect="error")
    path.write_text("embedded_port = true\n")
    _, message = fuzz.case("embedded_port = true", load_settings, path, expect="error")
    assert message.startswith("setting 'embedded_port' (from ") and "fuzz.toml" in message
    fuzz.check()


# -- manifests --------------------------------------------------------------------------------


def manifest_rows(rng: random.Random, world: World, images: list[str]) -> list[tuple[str, str]]:
    """(image, caption) rows: mostly fine, some hostile."""
    outside = world.inputs / "secret.png"
    image_choices = [
        *images, *images, "missing.png", str(outside), "../secret.png", "../../secret.png",
        "sub/../good0.png", "", "a\0b.png", "/etc/passwd", "x" * 300 + ".png",
    ]  # fmt: skip
    caption_choices = [
        "a dog", "two cats on a sofa", "first line\nsecond line", "", "  ", "nul\0inside",
        "x" * 200_000, "comma, and \"quotes\"", "ünïcödé 🐯",
    ]  # fmt: skip
    return [
        (rng.choice(image_choices), rng.choice(caption_choices)) for _ in range(rng.randint(1, 12))
    ]


def write_manifest(path: Path, rows: list[tuple[str, str]], rng: random.Random) -> None:
    if path.suffix == ".csv":
        out = io.StringIO()
        import csv

        writer = csv.writer(out)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
        path.write_text(out.getvalue())
        return
    lines = [json.dumps({"image": im, "captions": [cap]}) for im, cap in rows]
    roll = rng.random()
    if roll < 0.1:
        lines.insert(rng.randrange(len(lines) + 1), "[" * 100_000 + "]" * 100_000)
    elif roll < 0.2:
        lines.append('{"image": "good0.png", "captions": ["bad \\ud800 escape"]}')
    elif roll < 0.25:
        lines.append('{"image": ["good0.png"], "captions": 5}')
    path.write_text("\n".join(lines))


@pytest.mark.unit
def test_manifests(world):
    from meet_milvus_loaders.raw import read_karpathy, read_manifest, read_manifest_splits

    rng, fuzz = random.Random(SEED + 3), Fuzz("manifest")
    folder = world.inputs / "m"
    images = [p.name for p, good in image_files(folder).values() if good]
    (world.inputs / "secret.png").write_bytes((folder / "good0.png").read_bytes())
    for i in range(CASES["manifest"]):
        path = folder / f"fuzz{i}.{rng.choice(['csv', 'jsonl'])}"
        rows = manifest_rows(rng, world, images)
        write_manifest(path, rows, rng)
        outside = any(im.startswith(("/", "..")) for im, _ in rows)
        allow = rng.random() < 0.2
        label = f"{path.name} {rows!r:.200}"
        if rng.random() < 0.5:
            kind, value = fuzz.case(label, read_manifest, path, allow_outside=allow)
        else:
            ratios = rng.choice([None, (1, 0, 0), (0.5, 0.5, 0)])
            kind, value = fuzz.case(
                label, read_manifest_splits, path, ratios=ratios, allow_outside=allow
            )
        if kind == "ok":
            if outside and not allow:
                fuzz.fail(label, "an absolute or ../ image path was accepted")
            for raw in value if isinstance(value, list) else [value]:
                for p in raw.image_paths:
                    if not allow and not Path(os.path.normpath(p)).is_relative_to(folder):
                        fuzz.fail(label, f"image outside the image folder accepted: {p}")
                for c in (c for caps in raw.captions for c in caps):
                    if "\0" in c or "\n" in c or "linesecond" in c or not c.strip():
                        fuzz.fail(label, f"caption kept as {c[:60]!r}")
    # Karpathy files: deep, surrogate escapes, paths climbing out.
    for i, record in enumerate(
        [
            {"filename": "../secret.png", "split": "test", "sentences": [{"raw": "x"}]},
            {"filename": "good0.png", "split": "test", "sentences": [{"raw": "bad \ud800"}]},
            {"filename": "good0.png", "split": "test", "sentences": [{"raw": 5}]},
            {"filename": "good0.png", "split": "test", "sentences": [{"raw": "a\nb"}]},
        ]
    ):
        path = folder / f"karpathy{i}.json"
        path.write_text(json.dumps({"images": [record]}))
        expect = "ok" if i == 3 else "error"
        fuzz.case(f"karpathy {record}", read_karpathy, path, folder, "test", expect=expect)
    deep = folder / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    fuzz.case("deep karpathy", read_karpathy, deep, folder, "test", expect="error")
    # A caption over two lines in a quoted CSV field stays one caption, its words apart.
    quoted = folder / "quoted.csv"
    quoted.write_text('image,caption\ngood0.png,"first line\nsecond line"\ngood1.png,b\n')
    _, raw = fuzz.case("quoted newline", read_manifest, quoted, expect="ok")
    assert raw.captions == [["first line second line"], ["b"]]
    fuzz.check()


# -- feature extraction -----------------------------------------------------------------------


@pytest.mark.unit
def test_feature_extraction(world):
    from meet_milvus.model.features import GridFeatureExtractor, load_image

    rng, fuzz = random.Random(SEED + 4), Fuzz("features")
    files = image_files(world.inputs / "f")
    names = sorted(files)
    extractor = GridFeatureExtractor(device="cpu", cache_dir=world.cache)
    for _ in range(CASES["features"]):
        picked = [files[rng.choice(names)] for _ in range(rng.randint(1, 3))]
        batch = rng.choice([1, 2, 32, 0, -1, None, 1.5])
        good = all(ok for _, ok in picked) and batch in (1, 2, 32)
        paths = [p for p, _ in picked]
        if rng.random() < 0.5:
            expect = "ok" if picked[0][1] else "error"
            fuzz.case(f"load_image({paths[0].name})", load_image, paths[0], expect=expect)
            continue
        label = f"extract({[p.name for p in paths]}, batch_size={batch})"
        kind, value = fuzz.case(
            label, extractor.extract, paths, batch_size=batch, progress=False,
            expect="ok" if good else "error",
        )  # fmt: skip
        if kind == "ok" and value.shape != (len(paths), 49, FEATURE_DIM):
            fuzz.fail(label, f"shape {value.shape}")
    fuzz.check()


# -- the CLI, in-process ----------------------------------------------------------------------


def run_cli(args: list[str]) -> tuple[int | str, str, str]:
    """(exit code or "traceback", stdout, stderr) of `meet-milvus ARGS` through its main()."""
    from meet_milvus.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["meet-milvus", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code: int | str = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        code = "traceback"
        err.write(traceback.format_exc())
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def cli_case(fuzz: Fuzz, args: list[str], expect: str = "either") -> tuple[int | str, str, str]:
    """One CLI case: ok (exit 0), or exit != 0 with at most one stderr line and no traceback."""

    def call():
        code, out, err = run_cli(args)
        if code == "traceback" or "Traceback" in out + err:
            raise AssertionError(err)  # reported as a traceback
        if code != 0:
            lines = err.strip().splitlines()
            if len(lines) > 1:
                raise MeetError(err)  # reported as "not one line"
            raise MeetError(lines[0] if lines else f"exit {code} without a message")
        return code, out, err

    kind, value = fuzz.case(f"meet-milvus {' '.join(map(repr, args))[:200]}", call, expect=expect)
    return value if kind == "ok" else (kind, value, "")


class NoMilvus(BaseException):
    """Raised if a unit-tier CLI case reaches Milvus: bad input must be refused before."""


def bad_cli_args(rng: random.Random, world: World, files: dict) -> list[str]:
    """One command line that is wrong somewhere before Milvus is needed."""
    text = rng.choice([*BAD_TEXTS[:6], "a tiger"])
    k = rng.choice(["0", "-1", "abc", "1.5", "16385", "", "10"])
    name = rng.choice(["../../escaped", "..", "a/b", "", ".hidden", "x" * 300, "ok", "-x"])
    collection = rng.choice(["../x", "5", "", "a-b", "demo"])
    timeout = rng.choice(["0", "-1", "nan", "inf", "soon", "-inf", "1e400"])
    batch = rng.choice(["0", "-3", "x", "1.5"])
    bad_file = str(rng.choice([files["bomb.png"][0], files["long.png"][0], world.inputs]))
    config = world.inputs / rng.choice(["port.toml", "device.toml", "meet.toml", "extra.toml"])
    commands = [
        ["search", text, "--collection", collection, "-k", k]
        if text in BAD_TEXTS or collection != "demo" or k not in ("10",)
        else ["search", text, "--collection", "demo", "--image", bad_file],
        ["search", "--collection", "demo"],  # neither TEXT nor --image
        ["search", "a tiger", "--collection", "demo", "--image", bad_file],  # both
        ["search", "--image", bad_file, "--collection", "demo"],
        ["search", "x", "--collection", "demo", "--tier", "cloud"],
        ["search", "x", "--collection", "demo", "--sheet", str(world.cwd / "no" / "s.txt")],
        ["load", "--collection", collection if collection != "demo" else "../x"],
        ["load", "--collection", "g", "--batch-size", batch],
        ["load", "--collection", "g", "--neighbours", rng.choice(["0", "-1", "x"])],
        ["load", "--collection", "g", "--data", name if name != "ok" else "nope"],
        ["load", "--collection", "g", "--data", "demo", "--split", "../../x"],
        ["load", "--collection", "g", "--checkpoint", str(world.inputs / ("c" * 300))],
        ["data", "import", str(world.inputs / ("m" * 300 + ".csv"))],
        ["--config", str(world.inputs / ("t" * 300 + ".toml")), "server", "status"],
        ["eval", "run", "--collection", collection if collection != "demo" else "a-b"],
        ["eval", "tune-pq", "--collection", "demo", "--batch-size", batch],
        ["data", "import", str(world.inputs / "none.csv")],
        ["data", "import", str(world.inputs / "m.csv"), "--name", name if name != "ok" else ".."],
        ["data", "import", str(world.inputs / "m.csv"), "--batch-size", batch],
        ["data", "import", str(world.inputs / "m.csv"), "--max-captions", "-2"],
        ["data", "import", str(world.inputs / "outside.csv")],
        ["data", "folds", "--name", name if name != "ok" else "a/b"],
        ["data", "demo", "--batch-size", batch],
        ["data", "demo", "--train", rng.choice(["0", "-1", "x"])],
        ["server", rng.choice(["start", "stop", "status", "rotate-credentials"]),
         "--timeout", timeout],
        ["--config", str(config), "server", "status"],
        ["--config", str(world.inputs), "server", "status"],
        ["--device", rng.choice(["gpu", "cuda:x", ""]), "server", "status"],
        ["--uri", rng.choice(["ftp://x", "nonsense", "http://u:secret@h:1\n"]), "server", "start"],
        ["serve", "--collection", "demo", "--port", rng.choice(["-1", "70000", "x"])],
        ["serve", "--collection", "demo", "--max-upload-mb", rng.choice(["0", "-1", "nan"])],
        ["search", "x", "--collection", "demo", "--bogus-flag"],
        ["nonsense-command"],
    ]  # fmt: skip
    return rng.choice(commands)


@pytest.mark.unit
def test_cli_bad_arguments(world, monkeypatch):
    import meet_milvus.server as server_mod

    def no_milvus(*args, **kwargs):
        raise NoMilvus("a unit-tier CLI case reached Milvus")

    # Every module that binds `connect` (imported now, so none binds the stand-in for good).
    for name in ("meet_milvus.cli", "meet_milvus_loaders.milvus_loader", "meet_milvus.searcher"):
        importlib.import_module(name)
    for module in list(sys.modules.values()):
        if getattr(module, "connect", None) is server_mod.connect:
            monkeypatch.setattr(module, "connect", no_milvus)
    monkeypatch.setattr(server_mod.EmbeddedServer, "start", no_milvus)
    rng, fuzz = random.Random(SEED + 5), Fuzz("cli")
    files = image_files(world.inputs / "images")
    (world.inputs / "m.csv").write_text("image,caption\nimages/good0.png,a dog\n")
    (world.inputs / "outside.csv").write_text(f"image,caption\n{world.root / 'x.png'},a dog\n")
    for name, text in [("port", "embedded_port = true"), ("device", "device = 5"),
                       ("meet", "meet = 1"), ("extra", "x = 1")]:  # fmt: skip
        (world.inputs / f"{name}.toml").write_text(text)
    for _ in range(CASES["cli"]):
        cli_case(fuzz, bad_cli_args(rng, world, files), "error")
    # What is refused is named, in one line.
    _, message, _ = cli_case(fuzz, ["search", "tiger \udcff", "--collection", "demo"], "error")
    assert message.startswith("error: query 0: not UTF-8 (byte 0xff")
    _, message, _ = cli_case(fuzz, ["data", "import", str(world.inputs / "m.csv"),
                                    "--name", "../../escaped"], "error")  # fmt: skip
    assert "data set name '../../escaped'" in message
    # A good import still works, and writes only into the data dir.
    code, out, _ = cli_case(fuzz, ["data", "import", str(world.inputs / "m.csv"), "--name", "m",
                                   "--split-ratios", "1,0,0"], "ok")  # fmt: skip
    assert (world.data / "m_precomp" / "train_ims.npy").is_file(), out
    fuzz.check()


@pytest.mark.unit
def test_a_start_that_cannot_wait_launches_nothing(world):
    """The path by which bad input stopped a running server: EmbeddedServer.start launched a
    server, its wait failed at once (timeout 0, negative, NaN), and `except BaseException`
    terminated what it had launched, dropping the sessions of whatever etcd answered on the
    recorded port. The timeout is now refused before anything launches, from Python too."""
    from meet_milvus.config import load_settings
    from meet_milvus.server import EmbeddedServer

    settings = load_settings()
    for timeout in (0, -1, float("nan"), float("inf"), None, "5", True):
        with pytest.raises(MeetError, match="start timeout: must be a positive number"):
            EmbeddedServer(settings).start(timeout=timeout)
    assert not settings.milvus_dir.exists()  # no state, no lock, no process


@pytest.mark.unit
def test_a_copied_data_dir_never_stops_the_original_server(world):
    """A copy of a data dir holds the state of the original's server (pid, and the marker that
    tells its process apart): `server stop`, or a start, in the copy must not reach it."""
    import shutil
    import subprocess

    from meet_milvus.config import load_settings
    from meet_milvus.server import EmbeddedServer

    original = load_settings(data_dir=world.data / "original")
    marker = original.milvus_dir.absolute() / "configs" / "supervisor.json"
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)", str(marker)]
    proc = subprocess.Popen(sleeper)  # stands in for the original's supervisor
    try:
        original.milvus_dir.mkdir(parents=True)
        state = {"pid": proc.pid, "exe": sys.executable, "marker": str(marker),
                 "supervised": True, "port": 1, "metrics_port": 1}  # fmt: skip
        (original.milvus_dir / "server.json").write_text(json.dumps(state))
        assert EmbeddedServer(original).status().pid == proc.pid  # the original's own
        shutil.copytree(original.data_dir, world.data / "copy")
        copy = load_settings(data_dir=world.data / "copy")
        assert EmbeddedServer(copy).stop(timeout=1) is None
        assert proc.poll() is None, "stopping the copy stopped the original's server"
    finally:
        proc.kill()
        proc.wait()


# -- against Milvus ---------------------------------------------------------------------------


@pytest.mark.integration
def test_api_against_milvus(searcher, split, runtime_settings, demo_gallery):
    from meet_milvus import MeetSearcher

    rng, fuzz = random.Random(SEED + 6), Fuzz("api_milvus")
    rows = {"image": split.n_images, "text": split.n_captions}
    features = np.asarray(split.images[:3], dtype=np.float32)
    for i in range(CASES["api_milvus"]):
        k = rng.choice([1, 5, 10, 19, 20, 21, 100, 301, 16384, 0, -2, 2.5])
        if rng.random() < 0.5:
            text = rng.choice([*GOOD_TEXTS[:5], *BAD_TEXTS, None, 3, ["a dog", "a cat"]])
            valid, gallery = valid_text(text) or isinstance(text, list), "image"
            kind, value = fuzz.case(f"search({text!r:.40}, k={k})", searcher.search, text, k)
        else:
            image = rng.choice([features[0], features[:2][None][0], features[0] * np.nan, None])
            valid = isinstance(image, np.ndarray) and np.isfinite(image).all()
            gallery = "text"
            kind, value = fuzz.case(f"search_image(k={k})", searcher.search_image, image, k)
        valid = valid and isinstance(k, int) and k >= 1
        if valid != (kind == "ok"):
            fuzz.fail(f"case {i} (k={k})", f"valid={valid} but {kind}: {str(value)[:200]}")
        if kind == "ok":
            hits = value[0] if value and isinstance(value[0], list) else value
            # k above what a filter keeps grows the filters: min(k, gallery) hits, not fewer.
            if len(hits) != min(k, rows[gallery]):
                fuzz.fail(f"case {i}", f"k={k}: {len(hits)} hits of {rows[gallery]}")
    for collection in (None, 5, "../x", "no_such_gallery"):
        fuzz.case(
            f"MeetSearcher({collection!r})", MeetSearcher, collection,
            settings=runtime_settings, expect="error",
        )  # fmt: skip
    fuzz.check()


@pytest.mark.integration
def test_cli_against_milvus_never_stops_the_server(
    milvus_settings, runtime_settings, demo_gallery, split, tmp_path, monkeypatch
):
    from meet_milvus.server import EmbeddedServer

    before = EmbeddedServer(milvus_settings).status()
    assert before.running
    log = milvus_settings.milvus_dir / "logs" / "milvus.log"
    size = log.stat().st_size
    rng, fuzz = random.Random(SEED + 7), Fuzz("cli_milvus")
    world = World(tmp_path / "world")
    files = image_files(world.inputs / "images")
    token_file = tmp_path / "milvus.token"
    token_file.write_text(runtime_settings.milvus_token.get_secret_value())
    remote = ["--uri", runtime_settings.milvus_uri, "--token-file", str(token_file),
              "--data-dir", str(runtime_settings.data_dir)]  # fmt: skip
    embedded = ["--data-dir", str(milvus_settings.data_dir)]
    with isolated(world, monkeypatch):
        for _ in range(CASES["cli_milvus"]):
            roll = rng.random()
            if roll < 0.45:  # searches: bad texts, k, collections and images
                text = rng.choice([*BAD_TEXTS[:6], "a tiger"])
                k = rng.choice(["0", "-1", "abc", "16385", "5"])
                collection = rng.choice([demo_gallery, "no_such_gallery", "../x"])
                args = [*remote, "search", text, "--collection", collection, "-k", k]
                good = valid_text(text) and k == "5" and collection == demo_gallery
                if good and rng.random() < 0.9:  # each good search loads a model: a few only
                    args[-1] = "0"
                    good = False
            elif roll < 0.55:
                image = rng.choice(["bomb.png", "not_image.png", "missing.png", "good0.png"])
                args = [*remote, "search", "--image", str(files[image][0]),
                        "--collection", "no_such_gallery"]  # fmt: skip
                good = False
            elif roll < 0.7:
                args = [*remote, rng.choice([
                    ["eval", "pq-agreement", "--collection", "no_such_gallery"],
                    ["eval", "run", "--collection", demo_gallery, "--batch-size", "0"],
                    ["load", "--collection", "fz", "--data", "../demo"],
                    ["load", "--collection", "fz", "--data", "demo", "--split", "nope"],
                    ["load", "--collection", "fz", "--batch-size", "-1"],
                ])]  # fmt: skip
                args = [a for part in args for a in (part if isinstance(part, list) else [part])]
                good = False
            else:  # the embedded server itself: bad timeouts, and status/start of the running one
                command = rng.choice(["start", "stop", "status", "rotate-credentials"])
                timeout = rng.choice(["0", "-1", "nan", "inf", "soon", "-0.5", "1e400"])
                args = [*embedded, "server", command, "--timeout", timeout]
                good = False
                if rng.random() < 0.15:
                    args, good = [*embedded, "server", rng.choice(["status", "start"])], True
            cli_case(fuzz, args, "ok" if good else "error")
    after = EmbeddedServer(milvus_settings).status()
    assert after.running and after.pid == before.pid, "a bad-input command stopped the server"
    with log.open("rb") as fh:
        fh.seek(size)
        assert b"session key is deleted" not in fh.read()
    fuzz.check()


def _report(args: list[str]) -> int:
    """Run this file under pytest (extra pytest arguments: `args`, e.g. -m unit); print the
    cases it ran and how they ended."""
    code = pytest.main([__file__, "-q", "-p", "no:cacheprovider", *args])
    tally = sys.modules["tests.test_fuzz"].TALLY if "tests.test_fuzz" in sys.modules else TALLY
    print(
        f"{tally['cases']} cases, {tally['tracebacks']} tracebacks (seed {SEED}; "
        f"{tally['answered']} answered, {tally['refused']} refused in one line)"
    )
    return int(code)


if __name__ == "__main__" and "--report" in sys.argv:
    sys.exit(_report([a for a in sys.argv[1:] if a != "--report"]))
