"""Manifest splits: a split column, or a seeded cut by image at ratios; never one image in two."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from meet_milvus.cli import cli
from meet_milvus.errors import MeetError
from meet_milvus_loaders.importer import read_source
from meet_milvus_loaders.precomp import load_split
from meet_milvus_loaders.raw import read_manifest, read_manifest_splits


def _jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _images(split) -> set[str]:
    return {p.name for p in split.image_paths}


@pytest.mark.unit
def test_split_column_gives_disjoint_splits(tmp_path):
    path = tmp_path / "all.jsonl"
    _jsonl(path, [
        {"image": "a.jpg", "captions": ["A1", "A2"], "split": "train"},
        {"image": "b.jpg", "caption": "B1", "split": "val"},  # Karpathy's name for dev
        {"image": "c.jpg", "caption": "C1", "split": "test"},
        {"image": "a.jpg", "caption": "A3", "split": "train"},  # more captions, same split
    ])  # fmt: skip
    splits = read_manifest_splits(path, check_files=False)
    assert [(s.split, sorted(_images(s))) for s in splits] == [
        ("train", ["a.jpg"]), ("dev", ["b.jpg"]), ("test", ["c.jpg"]),
    ]  # fmt: skip
    assert splits[0].captions == [["A1", "A2", "A3"]] and splits[0].name == "all"
    # One split of it: only that split's rows.
    assert _images(read_manifest(path, "dev", check_files=False)) == {"b.jpg"}
    csv_path = tmp_path / "all.csv"
    csv_path.write_text("image,caption,split\na.jpg,A1,train\nb.jpg,B1,test\n")
    assert [s.split for s in read_manifest_splits(csv_path, check_files=False)] == ["train", "test"]


@pytest.mark.unit
@pytest.mark.parametrize(
    "rows, problem",
    [
        ([("a.jpg", "train"), ("a.jpg", "test")], r"line 2: a\.jpg is listed in split 'train' and"),
        ([("a.jpg", "train"), ("b.jpg", None)], "line 2: give every row a split or none"),
        ([("a.jpg", "../x")], r"line 1: split name '\.\./x': use letters, digits"),
    ],
)  # fmt: skip
def test_split_column_refuses_leaks_and_bad_names(tmp_path, rows, problem):
    path = tmp_path / "m.jsonl"
    _jsonl(
        path, [{"image": im, "caption": "x", **({"split": sp} if sp else {})} for im, sp in rows]
    )
    with pytest.raises(MeetError, match=problem):
        read_manifest_splits(path, check_files=False)


@pytest.mark.unit
def test_ratios_cut_by_image_from_the_seed(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"image": f"{i}.jpg", "captions": [f"c{i} a", f"c{i} b"]} for i in range(50)]
    _jsonl(path, rows)
    splits = read_manifest_splits(path, check_files=False)
    assert [(s.split, s.n_images) for s in splits] == [("train", 40), ("dev", 5), ("test", 5)]
    sets = [_images(s) for s in splits]
    assert set.union(*sets) == {f"{i}.jpg" for i in range(50)}
    assert sum(map(len, sets)) == 50  # disjoint: each image (and its captions) in one split
    for s in splits:  # an image keeps both its captions
        assert all(len(c) == 2 for c in s.captions)
    # Deterministic from the seed, whatever the rows' order; another seed, another cut.
    _jsonl(path, rows[::-1])
    assert [_images(s) for s in read_manifest_splits(path, check_files=False)] == sets
    other = read_manifest_splits(path, seed=1, check_files=False)
    assert [_images(s) for s in other] != sets
    # A zero share skips a split; a share too small for the images is refused.
    assert [s.split for s in read_manifest_splits(path, ratios=(0.5, 0, 0.5), check_files=False)
            ] == ["train", "test"]  # fmt: skip
    with pytest.raises(MeetError, match="50 images are too few for a test share of 0.01"):
        read_manifest_splits(path, ratios=(0.98, 0.01, 0.01), check_files=False)
    path.write_text('{"image": "a.jpg", "caption": "x", "split": "train"}\n')
    with pytest.raises(MeetError, match="has a split column; split ratios apply"):
        read_manifest_splits(path, ratios=(0.8, 0.1, 0.1), check_files=False)


def _import(demo_data, tmp_path, *args, cache=None):
    flags = ["--data-dir", str(tmp_path / "data"), "--cache-dir", str(cache or demo_data.cache_dir),
             "--device", "cpu"]  # fmt: skip
    return CliRunner().invoke(cli, [*flags, "data", "import", *args])


@pytest.fixture()
def photos(demo_data, tmp_path):
    """Four real demo images as tmp_path/images/{a,b,c,d}.jpg."""
    import shutil

    split = load_split(demo_data.data_dir, "demo", "test")
    folder = tmp_path / "images"
    folder.mkdir()
    for name, src in zip("abcd", split.image_paths, strict=False):
        shutil.copy(src, folder / f"{name}.jpg")
    return folder


@pytest.mark.unit
def test_import_refuses_what_it_cannot_write_before_reading_images(tmp_path):
    """`data import`'s checks, in loaders/importer.py: all before a feature is extracted."""
    path = tmp_path / "pairs.jsonl"
    _jsonl(path, [{"image": "a.jpg", "caption": "A", "split": "train"},
                  {"image": "b.jpg", "caption": "B", "split": "dev"}])  # fmt: skip
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    assert [r.split for r in read_source(path, splits=("dev", "dev"))] == ["dev"]  # once
    with pytest.raises(MeetError, match=r"no split 'test' \(it has train, dev\)"):
        read_source(path, splits=("train", "test"))
    with pytest.raises(MeetError, match="data set name '../x'"):
        read_source(path, name="../x")
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text("{}")
    with pytest.raises(MeetError, match="a Karpathy split file needs --images"):
        read_source(karpathy)
    with pytest.raises(MeetError, match="a Karpathy split file has its splits; no --split-rat"):
        read_source(karpathy, image_root=tmp_path, ratios=(0.8, 0.1, 0.1))


@pytest.mark.integration
def test_cli_imports_three_disjoint_splits_in_one_command(demo_data, photos, tmp_path):
    path = photos / "train.jsonl"  # a stem that is a split name: the name used is printed
    _jsonl(path, [
        {"image": "a.jpg", "captions": ["A1", "A2"], "split": "train"},
        {"image": "b.jpg", "captions": ["B1"], "split": "train"},
        {"image": "c.jpg", "captions": ["C1"], "split": "dev"},
        {"image": "d.jpg", "captions": ["D1"], "split": "test"},
    ])  # fmt: skip
    result = _import(demo_data, tmp_path, str(path))
    assert result.exit_code == 0, result.output
    assert "data set name 'train' (from train.jsonl; --name sets another)" in result.stderr
    assert [r.split() for r in result.stdout.splitlines()[2:]] == [
        ["train", "2", "3"], ["dev", "1", "1"], ["test", "1", "1"],
    ]  # fmt: skip
    paths = {sp: load_split(tmp_path / "data", "train", sp).image_paths for sp in ("train", "test")}
    assert not set(paths["train"]) & set(paths["test"])


@pytest.mark.integration
def test_cli_ratio_split_writes_only_the_named_parts(demo_data, photos, tmp_path, monkeypatch):
    path = photos / "pairs.csv"
    path.write_text("image,caption\n" + "".join(f"{n}.jpg,{n} one\n" for n in "abcd"))
    # Not a terminal (CliRunner): progress comes as lines; every update prints one here, and a
    # fresh feature cache makes the extraction run.
    monkeypatch.setattr("meet_milvus.progress.INTERVAL", 0.0)
    # Before: --split train --split test wrote the same four images into both.
    result = _import(demo_data, tmp_path, str(path), "--split", "train", "--split", "test",
                     "--split-ratios", "0.5,0.25,0.25", "--name", "mine",
                     cache=tmp_path / "cache")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "image features: 2/2 (100%), " in result.stderr and " left" in result.stderr
    assert [r.split() for r in result.stdout.splitlines()[2:]] == [
        ["train", "2", "2"], ["test", "1", "1"],
    ]  # fmt: skip
    assert "has no dev split; meet-train needs one" in result.stderr
    train, test = (load_split(tmp_path / "data", "mine", sp) for sp in ("train", "test"))
    assert not set(train.image_paths) & set(test.image_paths)
    np.testing.assert_array_equal(test.caption_image, [0])
    bad = _import(demo_data, tmp_path, str(path), "--split-ratios", "0.5,0.5")
    assert bad.exit_code == 2 and "three shares for train,dev,test" in bad.output
