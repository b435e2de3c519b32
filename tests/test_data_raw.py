"""Raw images with captions (Karpathy JSON, JSONL/CSV manifests), the feature extractor and the
offline text model, on real images taken from the demo set."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from meet_milvus.cli import cli
from meet_milvus.errors import MeetError
from meet_milvus.model.features import GridFeatureExtractor
from meet_milvus.model.text_model import text_model_path
from meet_milvus_loaders.precomp import load_split, write_split
from meet_milvus_loaders.raw import read_karpathy, read_manifest, to_split


@pytest.fixture()
def photos(demo_data, tmp_path):
    """Four real demo JPEGs copied to tmp_path/images/{a,b,c,d}.jpg."""
    split = load_split(demo_data.data_dir, "demo", "test")
    folder = tmp_path / "images"
    folder.mkdir()
    for name, src in zip("abcd", split.image_paths, strict=False):
        shutil.copy(src, folder / f"{name}.jpg")
    return folder


def _karpathy(tmp_path, photos):
    records = [
        {
            "filepath": "",
            "filename": f"{n}.jpg",
            "split": sp,
            "sentences": [{"raw": f" {n} caption {k} ", "tokens": []} for k in range(6)],
        }
        for n, sp in zip("abcd", ["train", "restval", "val", "test"], strict=True)
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": records}))
    return path


@pytest.mark.integration
def test_karpathy_splits(tmp_path, photos):
    path = _karpathy(tmp_path, photos)
    train = read_karpathy(path, photos, "train")
    assert train.name == "coco" and [p.name for p in train.image_paths] == ["a.jpg", "b.jpg"]
    assert train.captions[0] == [f"a caption {k}" for k in range(5)]  # first five, trimmed
    assert [p.name for p in read_karpathy(path, photos, "dev").image_paths] == ["c.jpg"]
    assert [p.name for p in read_karpathy(path, photos, "testall").image_paths] == ["d.jpg"]
    assert len(read_karpathy(path, photos, "test", max_captions=None).captions[0]) == 6


@pytest.mark.integration
def test_karpathy_bad_input(tmp_path, photos):
    path = _karpathy(tmp_path, photos)
    with pytest.raises(MeetError, match="unknown split 'val'"):
        read_karpathy(path, photos, "val")
    (photos / "c.jpg").unlink()
    with pytest.raises(MeetError, match=r"c\.jpg: image file not found \(listed in .*coco"):
        read_karpathy(path, photos, "dev")
    path.write_text('{"images": [{"filename": "a.jpg", "split": "train"}]}')
    with pytest.raises(MeetError, match="image record 0 lacks 'sentences'"):
        read_karpathy(path, photos, "train")
    path.write_text("{not json")
    with pytest.raises(MeetError, match="dataset_coco.json: not JSON"):
        read_karpathy(path, photos, "train")


@pytest.mark.integration
def test_jsonl_and_csv_manifests(photos):
    jsonl = photos / "pairs.jsonl"
    jsonl.write_text(
        '{"image": "a.jpg", "captions": ["A one.", "A two."]}\n\n'
        '{"image": "b.jpg", "caption": "B one."}\n'
    )
    m = read_manifest(jsonl, split="test")
    assert (m.name, m.split) == ("pairs", "test")
    assert [p.name for p in m.image_paths] == ["a.jpg", "b.jpg"]
    assert m.captions == [["A one.", "A two."], ["B one."]]

    csv_path = photos / "pairs.csv"
    csv_path.write_text(
        'image,caption_1,caption_2\na.jpg,"A one, with comma",A two\nb.jpg,B one,\na.jpg,A three,\n'
    )
    m = read_manifest(csv_path)
    assert m.captions == [["A one, with comma", "A two", "A three"], ["B one"]]


@pytest.mark.parametrize(
    "name, text, problem",
    [
        ("m.jsonl", '{"image": "a.jpg", "captions": []}\n', r"line 1: no caption for a\.jpg"),
        ("m.jsonl", '{"image": "a.jpg", "captions": "x"}\n{oops\n', "line 2: not JSON"),
        ("m.jsonl", '{"captions": ["x"]}\n', "line 1: no image path"),
        ("m.jsonl", '{"image": "zz.jpg", "captions": ["x"]}\n', r"zz\.jpg: image file not found"),
        ("m.csv", "path,text\na.jpg,x\n", "needs an 'image' column"),
        ("m.txt", "a.jpg x\n", "unknown manifest type"),
    ],
)
@pytest.mark.integration
def test_manifest_bad_input(photos, name, text, problem):
    path = photos / name
    path.write_text(text)
    with pytest.raises(MeetError, match=problem):
        read_manifest(path)


@pytest.mark.integration
def test_features_cached_by_content(demo_data, photos, tmp_path):
    cache = tmp_path / "cache"
    fx = GridFeatureExtractor(device="cpu", cache_dir=cache)
    paths = [photos / "a.jpg", photos / "b.jpg", photos / "a.jpg"]
    feats = fx.extract(paths, batch_size=2, progress=False)
    assert feats.shape == (3, 49, 1280) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats[0], feats[2])
    assert not np.array_equal(feats[0], feats[1])
    assert len(list(cache.rglob("*.npy"))) == 2  # one entry per distinct content
    # Same bytes under another name: served from the cache, the network is never built.
    shutil.copy(photos / "b.jpg", photos / "copy.jpg")
    fresh = GridFeatureExtractor(device="cpu", cache_dir=cache)
    again = fresh.extract([photos / "copy.jpg", photos / "a.jpg"], progress=False)
    assert fresh._model is None
    np.testing.assert_array_equal(again, feats[[1, 0]])
    # In-memory images give the same numbers as their files, to float16's last bit: a CPU
    # forward pass of another batch composition may round a few values the other way.
    with Image.open(photos / "a.jpg") as im:
        np.testing.assert_allclose(fx.extract_images([im]), feats[:1], rtol=2e-3, atol=1e-3)


@pytest.mark.integration
def test_unreadable_image(photos):
    bad = photos / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    fx = GridFeatureExtractor(device="cpu", cache_dir=None)
    with pytest.raises(MeetError, match=r"broken\.jpg: unreadable image"):
        fx.extract([photos / "a.jpg", bad], progress=False)
    with pytest.raises(MeetError, match=r"gone\.jpg: image file not found"):
        fx.extract([photos / "gone.jpg"], progress=False)


@pytest.mark.integration
def test_manifest_to_precomp(demo_data, photos, tmp_path):
    jsonl = photos / "pairs.jsonl"
    jsonl.write_text(
        '{"image": "a.jpg", "captions": ["A one.", "A two."]}\n'
        '{"image": "b.jpg", "captions": ["B one."]}\n'
    )
    fx = GridFeatureExtractor(device="cpu", cache_dir=demo_data.cache_dir)
    split = to_split(read_manifest(jsonl, split="test"), fx, progress=False)
    write_split(tmp_path / "data", split)
    back = load_split(tmp_path / "data", "pairs", "test")
    assert back.captions == ["A one.", "A two.", "B one."]
    np.testing.assert_array_equal(back.caption_image, [0, 0, 1])
    assert back.images.shape == (2, 49, 1280)
    assert [os.path.basename(p) for p in back.image_paths] == ["a.jpg", "b.jpg"]


@pytest.mark.integration
def test_cli_import_karpathy_then_folds(demo_data, photos, tmp_path):
    path = _karpathy(tmp_path, photos)
    args = [
        "--data-dir",
        str(tmp_path / "data"),
        "--cache-dir",
        str(demo_data.cache_dir),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(
        cli,
        [
            *args,
            "data",
            "import",
            str(path),
            "--images",
            str(photos),
            "--split",
            "train",
            "--split",
            "testall",
        ],
    )
    assert result.exit_code == 0, result.output
    assert [r.split() for r in result.stdout.splitlines()[2:]] == [
        ["train", "2", "10"],
        ["testall", "1", "5"],
    ]
    result = CliRunner().invoke(cli, [*args, "data", "folds", "--source", "train", "--folds", "2"])
    assert result.exit_code == 0, result.output
    assert [r.split() for r in result.stdout.splitlines()[2:]] == [
        ["1k_fold0", "1", "5"],
        ["1k_fold1", "1", "5"],
    ]


@pytest.mark.unit
def test_text_model_is_offline_minilm(tmp_path):
    from transformers import AutoConfig

    path = text_model_path()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "bert" and config.hidden_size == 384
    with pytest.raises(MeetError, match="has no config.json"):
        text_model_path(tmp_path)


@pytest.mark.unit
def test_a_symlink_out_of_the_image_folder_is_refused(tmp_path):
    """Checked as text, 'link.png' stays inside; its real path does not."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "ok.png")
    outside = tmp_path / "private.png"
    Image.new("RGB", (8, 8)).save(outside)
    (images / "link.png").symlink_to(outside)
    manifest = images / "m.jsonl"
    manifest.write_text('{"image": "ok.png", "captions": ["fine"]}\n'
                        '{"image": "link.png", "captions": ["a way out"]}\n')  # fmt: skip
    with pytest.raises(MeetError, match=r"image path 'link.png' leads outside the image folder"):
        read_manifest(manifest)
    assert read_manifest(manifest, allow_outside=True).n_images == 2  # when allowed explicitly
    (images / "link.png").unlink()
    (images / "inner.png").symlink_to(images / "ok.png")  # a link that stays inside is fine
    manifest.write_text('{"image": "inner.png", "captions": ["fine"]}\n')
    assert read_manifest(manifest).n_images == 1
