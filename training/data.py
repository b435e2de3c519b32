"""Training batches over a precomputed split: one item per caption, paired with its image."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from meet_milvus.errors import DataSetError
from meet_milvus.model.meet_model import TextBatcher
from meet_milvus_loaders.precomp import Split, load_split
from meet_milvus_training.miners import PairInfo


def normalise_caption(text: str) -> str:
    """The key under which two captions count as the same text."""
    return " ".join(text.lower().split()).rstrip(" .")


def load(data_dir: Path, name: str, split: str) -> Split:
    """A split through meet_milvus_loaders.precomp, refusing an empty one."""
    data = load_split(Path(data_dir), name, split)
    if data.n_images == 0 or data.n_captions == 0:
        raise DataSetError(f"data set {name!r} split {split!r} in {data_dir}: the split is empty")
    return data


def feature_dim(split: Split) -> int:
    return int(split.images.shape[-1])


class PairIndex:
    """Per split: a text id per caption (same normalised text = same id), the text ids of each
    image, and a source id per image (same source image path = same id)."""

    def __init__(self, split: Split) -> None:
        keys = [normalise_caption(c) for c in split.captions]
        ids: dict[str, int] = {}
        self.text_ids = np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)
        self.caption_image = np.asarray(split.caption_image, dtype=np.int64)
        per_image: list[set[int]] = [set() for _ in range(split.n_images)]
        for t, i in zip(self.text_ids, self.caption_image, strict=True):
            per_image[i].add(int(t))
        width = max(1, max(len(s) for s in per_image))
        self.image_texts = np.full((split.n_images, width), -1, dtype=np.int64)
        for i, s in enumerate(per_image):
            self.image_texts[i, : len(s)] = sorted(s)
        paths = split.image_paths
        if paths:
            sources: dict[str, int] = {}
            self.source_ids = np.array(
                [sources.setdefault(str(Path(p)), len(sources)) for p in paths], dtype=np.int64
            )
        else:
            self.source_ids = np.arange(split.n_images, dtype=np.int64)

    def pairs(self, caption_ids: np.ndarray) -> PairInfo:
        """PairInfo for a batch of captions (rows: their images, columns: the captions)."""
        images = self.caption_image[caption_ids]
        texts = self.text_ids[caption_ids]
        same_text = (self.image_texts[images][:, :, None] == texts[None, None, :]).any(1)
        sources = self.source_ids[images]
        return PairInfo(
            image_ids=torch.from_numpy(images),
            same_text=torch.from_numpy(same_text),
            same_source=torch.from_numpy(sources[:, None] == sources[None, :]),
        )


@dataclass
class Batch:
    images: Tensor  # (B, R, D) float32
    text: dict[str, Tensor]  # the text encoder's inputs
    caption_ids: Tensor  # (B,) caption index in the split
    pairs: PairInfo

    @property
    def image_ids(self) -> Tensor:
        return self.pairs.image_ids

    def to(self, device: str | torch.device) -> Batch:
        nb = str(device).startswith("cuda")
        pairs = PairInfo(
            **{f.name: getattr(self.pairs, f.name).to(device) for f in fields(PairInfo)}
        )
        return Batch(
            images=self.images.to(device, non_blocking=nb),
            text={k: v.to(device, non_blocking=nb) for k, v in self.text.items()},
            caption_ids=self.caption_ids.to(device),
            pairs=pairs,
        )

    def __len__(self) -> int:
        return int(self.caption_ids.shape[0])


class _Captions(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class Collate:
    """Caption indices -> Batch: gathers image features, runs the text batcher, builds PairInfo."""

    def __init__(self, split: Split, index: PairIndex, text_batcher: TextBatcher) -> None:
        self.split = split
        self.index = index
        self.text_batcher = text_batcher

    def __call__(self, ids: list[int]) -> Batch:
        caption_ids = np.asarray(ids, dtype=np.int64)
        images = np.asarray(self.split.images[self.index.caption_image[caption_ids]])
        return Batch(
            images=torch.from_numpy(images.astype(np.float32, copy=False)),
            text=self.text_batcher([self.split.captions[i] for i in caption_ids]),
            caption_ids=torch.from_numpy(caption_ids),
            pairs=self.index.pairs(caption_ids),
        )


def train_loader(
    split: Split,
    index: PairIndex,
    text_batcher: TextBatcher,
    batch_size: int,
    workers: int,
    seed: int,
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled batches, reproducible from `seed`; the last partial batch is dropped unless it is
    the only one (a batch of one has no negatives)."""
    n = split.n_captions
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        _Captions(n),
        batch_size=min(batch_size, n),
        shuffle=True,
        drop_last=n > batch_size,
        num_workers=workers,
        collate_fn=Collate(split, index, text_batcher),
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
