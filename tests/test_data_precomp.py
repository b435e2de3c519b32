"""The precomp format: both layouts, explicit caption maps, folds, and every kind of bad file."""

from __future__ import annotations

import numpy as np
import pytest

from meet_milvus.errors import MeetError
from meet_milvus_loaders.precomp import (
    Split,
    available_splits,
    load_split,
    write_folds,
    write_split,
)

pytestmark = pytest.mark.unit


def _split(n_images=4, per_image=5, shape=(3, 8), dtype=np.float32, name="coco", split="test"):
    rng = np.random.default_rng(0)
    captions = [f"caption {c} of image {i}" for i in range(n_images) for c in range(per_image)]
    return Split(
        name=name,
        split=split,
        images=rng.standard_normal((n_images, *shape)).astype(dtype),
        captions=captions,
        caption_image=np.repeat(np.arange(n_images, dtype=np.int64), per_image),
    )


def _files(tmp_path, split="test", name="coco"):
    root = tmp_path / f"{name}_precomp"
    root.mkdir(exist_ok=True)
    return root / f"{split}_ims.npy", root / f"{split}_caps.txt"


@pytest.mark.parametrize("shape", [(3, 8), (8,)], ids=["regions", "pooled"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_trip_one_row_per_image(tmp_path, shape, dtype):
    s = _split(shape=shape, dtype=dtype)
    root = write_split(tmp_path, s)
    assert sorted(p.name for p in root.iterdir()) == ["test_caps.txt", "test_ims.npy"]
    back = load_split(tmp_path, "coco", "test")
    assert back.images.dtype == dtype and back.images.shape == (4, *shape)
    np.testing.assert_array_equal(back.images, s.images)
    assert back.captions == s.captions
    np.testing.assert_array_equal(back.caption_image, s.caption_image)
    assert (back.n_images, back.n_captions) == (4, 20)
    assert available_splits(tmp_path, "coco") == ["test"]


def test_one_row_per_caption_is_folded_back(tmp_path):
    s = _split()
    ims, caps = _files(tmp_path)
    np.save(ims, np.repeat(s.images, 5, axis=0))  # rkiros-style: each image once per caption
    caps.write_text("".join(c + "\n" for c in s.captions))
    back = load_split(tmp_path, "coco", "test")
    np.testing.assert_array_equal(back.images, s.images)
    np.testing.assert_array_equal(back.caption_image, np.arange(20) // 5)


def test_one_caption_per_distinct_image_is_not_folded(tmp_path):
    s = _split(n_images=10, per_image=1)
    write_split(tmp_path, s)
    back = load_split(tmp_path, "coco", "test", mmap=True)
    assert back.n_images == 10
    np.testing.assert_array_equal(back.caption_image, np.arange(10))


def test_variable_captions_and_image_paths_round_trip(tmp_path):
    s = Split(
        name="mine",
        split="train",
        images=np.ones((3, 2, 4), np.float32),
        captions=["a", "b", "c", "d", "e", "f"],
        caption_image=np.array([0, 0, 0, 1, 2, 2], np.int64),
        image_paths=[str(tmp_path / "mine_precomp" / "img" / f"{i}.jpg") for i in range(3)],
    )
    root = write_split(tmp_path, s)
    assert (root / "train_cap_img.npy").is_file()
    assert (root / "train_images.txt").read_text().splitlines()[0] == "img/0.jpg"  # relative
    back = load_split(tmp_path, "mine", "train")
    np.testing.assert_array_equal(back.caption_image, s.caption_image)
    assert back.image_paths == s.image_paths


def test_subset_keeps_captions_with_their_images():
    s = _split(n_images=4, per_image=2)
    sub = s.subset([2, 0], split="x")
    assert sub.captions == [
        "caption 0 of image 2",
        "caption 1 of image 2",
        "caption 0 of image 0",
        "caption 1 of image 0",
    ]
    np.testing.assert_array_equal(sub.caption_image, [0, 0, 1, 1])
    np.testing.assert_array_equal(sub.images[0], s.images[2])


def test_coco_five_folds(tmp_path):
    full = _split(n_images=10, per_image=5, split="testall")
    write_split(tmp_path, full)
    folds = write_folds(tmp_path, "coco", "testall", n_folds=5)
    assert [f.split for f in folds] == [f"1k_fold{i}" for i in range(5)]
    for i in range(5):
        fold = load_split(tmp_path, "coco", f"1k_fold{i}")
        assert (fold.n_images, fold.n_captions) == (2, 10)
        np.testing.assert_array_equal(fold.images, full.images[2 * i : 2 * i + 2])
        assert fold.captions == full.captions[10 * i : 10 * i + 10]


def test_folds_need_equal_parts(tmp_path):
    write_split(tmp_path, _split(n_images=7, split="testall"))
    with pytest.raises(MeetError, match="7 images do not split into 5 equal folds"):
        write_folds(tmp_path, "coco", "testall")


# ---------------------------------------------------------------- bad input


def test_missing_data_set_and_split_files(tmp_path):
    with pytest.raises(MeetError, match="data set 'coco': no directory"):
        load_split(tmp_path, "coco", "test")
    write_split(tmp_path, _split(split="dev"))
    with pytest.raises(MeetError, match=r"test_ims\.npy: missing .*have: dev"):
        load_split(tmp_path, "coco", "test")
    (tmp_path / "coco_precomp" / "dev_caps.txt").unlink()
    with pytest.raises(MeetError, match=r"dev_caps\.txt: missing"):
        load_split(tmp_path, "coco", "dev")


def test_caption_count_not_a_multiple(tmp_path):
    ims, caps = _files(tmp_path)
    np.save(ims, np.zeros((4, 3, 8), np.float32))
    caps.write_text("".join(f"c{i}\n" for i in range(18)))
    with pytest.raises(
        MeetError,
        match=r"test_caps\.txt: 18 captions is not a multiple of the 4 "
        r"images in test_ims\.npy",
    ):
        load_split(tmp_path, "coco", "test")


@pytest.mark.parametrize(
    "array, problem",
    [
        (np.zeros((4, 2, 3, 8), np.float32), "expected features of shape"),
        (np.zeros((4,), np.float32), "expected features of shape"),
        (np.zeros((0, 8), np.float32), "expected features of shape"),
        (np.zeros((4, 8), np.int32), "expected float16 or float32 features, got int32"),
        (np.zeros((4, 8), np.bool_), "expected float16 or float32 features, got bool"),
    ],
)
def test_wrong_shapes_and_dtypes(tmp_path, array, problem):
    ims, caps = _files(tmp_path)
    np.save(ims, array)
    caps.write_text("a\n" * 4)
    with pytest.raises(MeetError, match=f"test_ims.npy: {problem}"):
        load_split(tmp_path, "coco", "test")


def test_float64_features_are_read_as_float32(tmp_path):
    ims, caps = _files(tmp_path)
    np.save(ims, np.ones((2, 8), np.float64))
    caps.write_text("a\nb\n")
    assert load_split(tmp_path, "coco", "test").images.dtype == np.float32


def test_not_an_array_and_pickles_refused(tmp_path):
    ims, caps = _files(tmp_path)
    caps.write_text("a\n")
    ims.write_bytes(b"this is no npy file")
    with pytest.raises(MeetError, match=r"test_ims\.npy: not a readable \.npy array"):
        load_split(tmp_path, "coco", "test")
    np.save(ims, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MeetError, match=r"test_ims\.npy: not a readable \.npy array"):
        load_split(tmp_path, "coco", "test")


def test_bad_caption_files(tmp_path):
    ims, caps = _files(tmp_path)
    np.save(ims, np.zeros((2, 8), np.float32))
    caps.write_text("a\n\nc\nd\n")
    with pytest.raises(MeetError, match=r"test_caps\.txt: line 2 is an empty caption"):
        load_split(tmp_path, "coco", "test")
    caps.write_bytes(b"caf\xe9\nb\n")
    with pytest.raises(MeetError, match=r"test_caps\.txt: not UTF-8"):
        load_split(tmp_path, "coco", "test")


def test_bad_caption_map(tmp_path):
    write_split(tmp_path, _split(n_images=2, per_image=2))
    cap_img = tmp_path / "coco_precomp" / "test_cap_img.npy"
    np.save(cap_img, np.array([0, 1, 2, 2]))
    with pytest.raises(MeetError, match=r"test_cap_img\.npy: image indices outside 0\.\.1"):
        load_split(tmp_path, "coco", "test")
    np.save(cap_img, np.array([0.0, 1.0, 1.0, 1.0]))
    with pytest.raises(MeetError, match=r"test_cap_img\.npy: expected integers of shape \(4,\)"):
        load_split(tmp_path, "coco", "test")


def test_split_invariants(tmp_path):
    with pytest.raises(MeetError, match="caption_image refers to images outside"):
        Split("x", "y", np.zeros((2, 4), np.float32), ["a"], np.array([5], np.int64))
    with pytest.raises(MeetError, match="images must be float16 or float32"):
        Split("x", "y", np.zeros((2, 4), np.int8), ["a"], np.array([0], np.int64))
    with pytest.raises(MeetError, match="caption 0 is empty or spans several lines"):
        write_split(
            tmp_path,
            Split("x", "y", np.zeros((1, 4), np.float32), ["two\nlines"], np.array([0], np.int64)),
        )
