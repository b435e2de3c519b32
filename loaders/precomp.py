"""The paper's precomputed format: `{data_dir}/{name}_precomp/{split}_ims.npy` + `{split}_caps.txt`.

Two layouts exist in the wild. The usual one has one feature row per image and the captions of
each image on consecutive lines (five for COCO and Flickr30K). Older files (rkiros-style) repeat
each image's row once per caption; those rows are folded back to one row per image on load.
A `{split}_cap_img.npy` file, when present, maps each caption to its image explicitly (a variable
number of captions per image), and `{split}_images.txt` names each image's source file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meet_milvus.errors import DataSetError
from meet_milvus.files import replacing
from meet_milvus.inputs import check_data_name

FEATURE_DTYPES = (np.float16, np.float32)
COCO_FOLDS = 5


@dataclass(frozen=True)
class Split:
    """One split of a data set: image features, captions and which image each caption describes."""

    name: str
    split: str
    images: np.ndarray
    captions: list[str]
    caption_image: np.ndarray
    image_paths: list[str] | None = None

    def __post_init__(self) -> None:
        check_data_name(self.name, "data set")
        check_data_name(self.split, "split")
        where = f"split {self.name}/{self.split}"
        if self.images.ndim not in (2, 3) or self.images.shape[0] == 0:
            raise DataSetError(
                f"{where}: images must be (N, D) or (N, R, D) with N > 0, "
                f"got shape {self.images.shape}"
            )
        if self.images.dtype not in FEATURE_DTYPES:
            raise DataSetError(
                f"{where}: images must be float16 or float32, got {self.images.dtype}"
            )
        ci = self.caption_image
        if ci.shape != (len(self.captions),) or ci.dtype != np.int64:
            raise DataSetError(
                f"{where}: caption_image must be int64 of shape ({len(self.captions)},),"
                f" got {ci.dtype} {ci.shape}"
            )
        if len(ci) and (ci.min() < 0 or ci.max() >= self.n_images):
            raise DataSetError(
                f"{where}: caption_image refers to images outside 0..{self.n_images - 1}"
            )
        if self.image_paths is not None and len(self.image_paths) != self.n_images:
            raise DataSetError(
                f"{where}: {len(self.image_paths)} image paths for {self.n_images} images"
            )

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def subset(self, image_ids: np.ndarray | list[int], split: str) -> Split:
        """The images `image_ids` (in that order) with their captions, as a new split."""
        image_ids = np.asarray(image_ids, dtype=np.int64)
        new_id = np.full(self.n_images, -1, dtype=np.int64)
        new_id[image_ids] = np.arange(len(image_ids))
        # Captions keep their order within each image; images come in the order asked for.
        order = np.argsort(new_id[self.caption_image], kind="stable")
        keep = order[new_id[self.caption_image][order] >= 0]
        return Split(
            name=self.name,
            split=split,
            images=np.ascontiguousarray(self.images[image_ids]),
            captions=[self.captions[i] for i in keep],
            caption_image=new_id[self.caption_image[keep]],
            image_paths=None
            if self.image_paths is None
            else [self.image_paths[i] for i in image_ids],
        )


def precomp_dir(data_dir: Path, name: str) -> Path:
    """Where data set `name` lives; a name that would lead elsewhere is refused."""
    return Path(data_dir) / f"{check_data_name(name, 'data set')}_precomp"


def available_splits(data_dir: Path, name: str) -> list[str]:
    """The splits of data set `name` that have both an `_ims.npy` and a `_caps.txt` file."""
    root = precomp_dir(data_dir, name)
    if not root.is_dir():
        return []
    return sorted(
        p.name[: -len("_ims.npy")]
        for p in root.glob("*_ims.npy")
        if (root / p.name.replace("_ims.npy", "_caps.txt")).is_file()
    )


def load_split(data_dir: Path, name: str, split: str, mmap: bool = False) -> Split:
    """Read split `split` of data set `name`; `mmap` maps the features instead of reading them."""
    root = precomp_dir(data_dir, name)
    check_data_name(split, "split")
    if not root.is_dir():
        raise DataSetError(f"data set '{name}': no directory {root}")
    ims_path, caps_path = root / f"{split}_ims.npy", root / f"{split}_caps.txt"
    for path in (ims_path, caps_path):
        if not path.is_file():
            have = ", ".join(available_splits(data_dir, name)) or "none"
            raise DataSetError(
                f"{path}: missing (split '{split}' of data set '{name}'; have: {have})"
            )

    images = _load_array(ims_path, mmap)
    if images.ndim not in (2, 3) or images.shape[0] == 0:
        raise DataSetError(
            f"{ims_path}: expected features of shape (N, D) or (N, R, D) with N > 0, "
            f"got {images.shape}"
        )
    if images.dtype == np.float64:
        images = images.astype(np.float32)
    elif images.dtype not in FEATURE_DTYPES:
        raise DataSetError(f"{ims_path}: expected float16 or float32 features, got {images.dtype}")

    captions = _read_captions(caps_path)
    cap_img_path = root / f"{split}_cap_img.npy"
    if cap_img_path.is_file():
        caption_image = _load_array(cap_img_path, False)
        if caption_image.shape != (len(captions),) or caption_image.dtype.kind not in "iu":
            raise DataSetError(
                f"{cap_img_path}: expected integers of shape ({len(captions)},) "
                f"(one per caption in {caps_path.name}), got "
                f"{caption_image.dtype} {caption_image.shape}"
            )
        caption_image = caption_image.astype(np.int64)
        if caption_image.min() < 0 or caption_image.max() >= images.shape[0]:
            raise DataSetError(f"{cap_img_path}: image indices outside 0..{images.shape[0] - 1}")
    else:
        images, caption_image = _regular_layout(images, len(captions), ims_path, caps_path)

    paths_file = root / f"{split}_images.txt"
    image_paths = None
    if paths_file.is_file():
        lines = paths_file.read_text(encoding="utf-8").splitlines()
        if len(lines) != images.shape[0]:
            raise DataSetError(f"{paths_file}: {len(lines)} paths for {images.shape[0]} images")
        image_paths = [str(root / p) for p in lines]  # absolute paths stay absolute
    return Split(name, split, images, captions, caption_image, image_paths)


def _regular_layout(
    images: np.ndarray, n_captions: int, ims_path: Path, caps_path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Captions consecutive per image; fold rows repeated once per caption back to one per image."""
    n_rows = images.shape[0]
    if n_rows == n_captions:
        for k in (5,):
            if n_rows % k == 0 and n_rows > k and _rows_repeat(images, k):
                images = images[::k]
                break
    if n_captions % images.shape[0] != 0 or n_captions == 0:
        raise DataSetError(
            f"{caps_path}: {n_captions} captions is not a multiple of the "
            f"{n_rows} images in {ims_path.name}"
        )
    per_image = n_captions // images.shape[0]
    return images, np.arange(n_captions, dtype=np.int64) // per_image


def _rows_repeat(images: np.ndarray, k: int) -> bool:
    """Whether every group of k consecutive rows holds k copies of one row (checked on a sample,
    so that a 30 GB memory-mapped file is not read whole)."""
    n_groups = images.shape[0] // k
    groups = np.unique(np.linspace(0, n_groups - 1, num=min(n_groups, 64)).astype(np.int64))
    return all(
        all(np.array_equal(images[g * k], images[g * k + j]) for j in range(1, k)) for g in groups
    )


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataSetError(f"{path}: not a readable .npy array ({e})") from None


def _read_captions(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataSetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    captions = [line.strip() for line in lines]
    for i, c in enumerate(captions):
        if not c:
            raise DataSetError(f"{path}: line {i + 1} is an empty caption")
    if not captions:
        raise DataSetError(f"{path}: no captions")
    return captions


def write_split(data_dir: Path, split: Split) -> Path:
    """Write `split` in the precomp format; return the data set's directory."""
    for i, c in enumerate(split.captions):
        if not c.strip() or "\n" in c or "\r" in c:
            raise DataSetError(
                f"split {split.name}/{split.split}: caption {i} is empty or spans several lines"
            )
    root = precomp_dir(data_dir, split.name)
    root.mkdir(parents=True, exist_ok=True)
    stem = split.split
    _atomic_save(root / f"{stem}_ims.npy", split.images)
    _atomic_text(root / f"{stem}_caps.txt", "".join(c.strip() + "\n" for c in split.captions))
    cap_img = root / f"{stem}_cap_img.npy"
    per_image = split.n_captions // split.n_images
    regular = split.n_captions == per_image * split.n_images and np.array_equal(
        split.caption_image, np.arange(split.n_captions) // max(per_image, 1)
    )
    if regular:
        cap_img.unlink(missing_ok=True)
    else:
        _atomic_save(cap_img, split.caption_image)
    paths_file = root / f"{stem}_images.txt"
    if split.image_paths is None:
        paths_file.unlink(missing_ok=True)
    else:
        rel = [_relative_to(Path(p), root) for p in split.image_paths]
        _atomic_text(paths_file, "".join(p + "\n" for p in rel))
    return root


def write_folds(
    data_dir: Path, name: str = "coco", source: str = "testall", n_folds: int = COCO_FOLDS
) -> list[Split]:
    """Cut `source` (COCO's 5K test images) into `n_folds` consecutive folds `1k_fold0`.. and
    write them; the COCO 1K protocol averages the results over the folds."""
    full = load_split(data_dir, name, source, mmap=True)
    if full.n_images % n_folds:
        raise DataSetError(
            f"{precomp_dir(data_dir, name) / (source + '_ims.npy')}: "
            f"{full.n_images} images do not split into {n_folds} equal folds"
        )
    size = full.n_images // n_folds
    folds = []
    for f in range(n_folds):
        fold = full.subset(np.arange(f * size, (f + 1) * size), split=f"1k_fold{f}")
        write_split(data_dir, fold)
        folds.append(fold)
    return folds


def _relative_to(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


# Written whole or not at all: an interrupted run never leaves a truncated split behind.
def _atomic_save(path: Path, array: np.ndarray) -> None:
    with replacing(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def _atomic_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
