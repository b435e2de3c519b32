"""The demo set: real stamps, held-out test stamps, five captions per image, seeded, and its CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from meet_milvus.cli import cli
from meet_milvus.errors import MeetError
from meet_milvus_loaders.demo import Renderer, partition_stamps, plan_split
from meet_milvus_loaders.precomp import load_split
from meet_milvus_loaders.stamps import fetch_package, load_stamps, noun_phrase, plural_noun
from tests.plugins.data import DEMO_SIZES


@pytest.fixture(scope="module")
def stamps(demo_data):
    return load_stamps(fetch_package(demo_data.cache_dir))


@pytest.mark.integration
def test_demo_splits_have_coco_shape(demo_data):
    for split, n in DEMO_SIZES.items():
        s = load_split(demo_data.data_dir, "demo", split)
        assert s.images.shape == (n, 49, 1280) and s.images.dtype == np.float16
        assert s.n_captions == 5 * n
        np.testing.assert_array_equal(s.caption_image, np.arange(5 * n) // 5)
        for i in range(n):  # five different captions per image
            assert len(set(s.captions[5 * i : 5 * i + 5])) == 5
        assert all(Path(p).is_file() for p in s.image_paths)
        feats = s.images.astype(np.float32)
        assert np.isfinite(feats).all() and feats.std() > 0


@pytest.mark.integration
def test_dev_and_test_stamps_never_occur_in_training(demo_data, stamps):
    meta = json.loads((demo_data.data_dir / "demo_precomp" / "demo.json").read_text())
    by_key = {s.key: s for s in stamps}
    parts = {split: set(meta["splits"][split]["stamps"]) for split in DEMO_SIZES}
    assert not parts["train"] & parts["dev"] and not parts["train"] & parts["test"]
    assert not parts["dev"] & parts["test"]
    groups = {split: {by_key[k].group for k in keys} for split, keys in parts.items()}
    assert not groups["train"] & (groups["dev"] | groups["test"])  # one name, one split
    for split in DEMO_SIZES:
        used = {k for image in meta["splits"][split]["images"] for k in image}
        assert used <= parts[split]


@pytest.mark.integration
def test_partition_is_whole_groups_and_roughly_80_10_10(stamps):
    parts = partition_stamps(stamps, seed=0)
    assert sum(len(p) for p in parts.values()) == len(stamps)
    for split, share in {"train": 0.8, "dev": 0.1, "test": 0.1}.items():
        assert abs(len(parts[split]) / len(stamps) - share) < 0.03
    assert partition_stamps(stamps, seed=0) == parts
    assert partition_stamps(stamps, seed=1) != parts


@pytest.mark.integration
def test_same_seed_same_captions_and_images(stamps):
    parts = partition_stamps(stamps, seed=3)
    a = plan_split(parts["test"], 30, seed=3, split_index=2)
    b = plan_split(parts["test"], 30, seed=3, split_index=2)
    assert a == b
    assert [p.captions for p in plan_split(parts["test"], 30, 4, 2)] != [p.captions for p in a]
    r = Renderer()
    assert all(
        r.render(x).tobytes() == Renderer().render(y).tobytes() for x, y in zip(a, b, strict=True)
    )


@pytest.mark.integration
def test_scenes_have_two_to_four_stamps_and_singles_keep_the_real_description(stamps):
    parts = partition_stamps(stamps, seed=0)
    pictures = plan_split(parts["train"], 200, seed=0, split_index=0)
    sizes = [len(p.placements) for p in pictures]
    assert set(sizes) <= {1, 2, 3, 4} and sizes.count(1) == 50
    for p in pictures:
        if len(p.placements) == 1:
            assert p.captions[0] == p.placements[0].stamp.description
        for a in p.placements:  # stamps never overlap, so every one is visible
            for b in p.placements:
                if a is not b:
                    ax, ay, aw, ah = a.box
                    bx, by, bw, bh = b.box
                    assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay


@pytest.mark.integration
def test_excluded_categories_and_descriptions(stamps):
    keys = [s.key for s in stamps]
    assert len(stamps) > 400
    assert not any(k.startswith(("symbols/", "town/roadsigns/")) for k in keys)
    rhino = next(s for s in stamps if s.key == "animals/mammals/rhino_black")
    assert (rhino.description, rhino.phrase, rhino.plural) == (
        "A male black rhino.",
        "a male black rhino",
        "male black rhinos",
    )
    cows = [s for s in stamps if s.description == "A cow."]
    assert len(cows) == 2 and len({s.group for s in cows}) == 1


@pytest.mark.parametrize(
    "description, expected",
    [
        ("A male black rhino.", ("a male black rhino", "male black rhinos")),
        (
            "An albino peahen (a female peafowl, or peacock).",
            ("an albino peahen", "albino peahens"),
        ),
        ("A head of lettuce.", ("a head of lettuce", "heads of lettuce")),
        ("A spider playing soccer.", ("a spider playing soccer", "spiders playing soccer")),
        (
            "A chick hatched from an egg.",
            ("a chick hatched from an egg", "chicks hatched from an egg"),
        ),
        (
            "An old Chinese sailing ship.",
            ("an old Chinese sailing ship", "old Chinese sailing ships"),
        ),
        (
            "A candy cane is a traditional Christmas treat in the United States.",
            ("a candy cane", "candy canes"),
        ),
        ("A spiny lobster, from the Hawaiian islands.", ("a spiny lobster", "spiny lobsters")),
        ("A ripe, red tomato!", ("a ripe, red tomato", "ripe, red tomatoes")),
        ("Another tombstone.", ("a tombstone", "tombstones")),
        ("The Sun.", ("the Sun", None)),
        ("Santa Claus.", ("Santa Claus", None)),
        ("Circus tent.", ("circus tent", None)),
        ("Mercury—the planet closest to the Sun.", ("Mercury", None)),
        ("Eat your broccoli!", None),
        ("Enter the cave.", None),
        ("– Because a brain is a terrible thing to waste…", None),
        ("Gimel stands for gants or all. If the dreidel lands on gimel, take everything.", None),
    ],
)
@pytest.mark.unit
def test_noun_phrases(description, expected):
    assert noun_phrase(description) == expected


@pytest.mark.parametrize(
    "word, plural",
    [
        ("mouse", "mice"),
        ("woodlouse", "woodlice"),
        ("fox", "foxes"),
        ("strawberry", "strawberries"),
        ("donkey", "donkeys"),
        ("fireman", "firemen"),
        ("sheep", "sheep"),
        ("scarf", "scarves"),
        ("'root'", "'roots'"),
        ("Beetle", "Beetles"),
    ],
)
@pytest.mark.unit
def test_plural_nouns(word, plural):
    assert plural_noun(word) == plural


@pytest.mark.integration
def test_cli_demo_prints_the_table_and_rebuilds_byte_identical(demo_data, tmp_path):
    sizes = [f"--{split}={n}" for split, n in DEMO_SIZES.items()]
    args = ["--data-dir", str(tmp_path), "--cache-dir", str(demo_data.cache_dir)]
    result = CliRunner().invoke(cli, [*args, "--device", "cpu", "data", "demo", *sizes])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"demo data set in {tmp_path / 'demo_precomp'} (seed 0")
    assert lines[1].split() == ["split", "images", "captions", "singles", "stamps"]
    table = {r.split()[0]: r.split()[1:3] for r in lines[2:]}
    assert table == {"train": ["40", "200"], "dev": ["10", "50"], "test": ["20", "100"],
                     "test_seen": ["20", "100"]}  # fmt: skip
    # Same seed as the fixture: the same captions, features and image files, byte for byte.
    for split in DEMO_SIZES:
        for suffix in ("_caps.txt", "_ims.npy"):
            name = f"demo_precomp/{split}{suffix}"
            assert (tmp_path / name).read_bytes() == (demo_data.data_dir / name).read_bytes()
        a = sorted((tmp_path / "demo_precomp/images" / split).iterdir())
        b = sorted((demo_data.data_dir / "demo_precomp/images" / split).iterdir())
        assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


@pytest.mark.unit
def test_cli_errors_are_one_line(tmp_path):
    env = {**os.environ, "MEET_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from meet_milvus.cli import main; main()",
            "data",
            "folds",
            "--name",
            "coco",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: data set 'coco': no directory {tmp_path / 'coco_precomp'}\n"


@pytest.mark.unit
def test_failed_package_download_is_a_clear_error(tmp_path, monkeypatch):
    # An apt-get that cannot find the package even after `apt-get update` (as on a machine
    # without Debian's archive); it logs its calls so the update-then-retry path is checked.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    apt = bin_dir / "apt-get"
    apt.write_text(
        f'#!/bin/sh\necho "$@" >> {log}\n'
        'if [ "$1" = download ]; then\n'
        '  echo "E: Unable to locate package $2" >&2; exit 100\nfi\n'
    )
    apt.chmod(apt.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(MeetError) as e:
        fetch_package(tmp_path / "cache")
    assert str(e.value) == (
        "could not download Debian package tuxpaint-stamps-default: "
        "E: Unable to locate package tuxpaint-stamps-default"
    )
    assert log.read_text().split("\n")[:3] == [
        "download tuxpaint-stamps-default",
        "update",
        "download tuxpaint-stamps-default",
    ]


@pytest.mark.integration
def test_seen_split_is_training_stamps_in_new_scenes(demo_data, stamps):
    # COCO-like: objects seen in training, in compositions no training picture has.
    from meet_milvus_loaders.demo import _composition, plan_seen

    parts = partition_stamps(stamps, seed=0)
    train = plan_split(parts["train"], 40, seed=0, split_index=0)
    seen = plan_seen(train, parts["train"], 30, seed=0)
    assert len(seen) == 30 and all(len(p.placements) >= 2 for p in seen)
    assert {k for p in seen for k in p.stamp_keys} <= {s.key for s in parts["train"]}
    assert not {_composition(p) for p in seen} & {_composition(p) for p in train}
    meta = json.loads((demo_data.data_dir / "demo_precomp" / "demo.json").read_text())
    used = {k for image in meta["splits"]["test_seen"]["images"] for k in image}
    assert used <= set(meta["splits"]["train"]["stamps"])
    assert load_split(demo_data.data_dir, "demo", "test_seen").n_images == DEMO_SIZES["test"]
