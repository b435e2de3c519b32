"""Dynamic dictionary: a ring buffer of key embeddings with the image and caption they came from."""

from __future__ import annotations

import torch
from torch import Tensor, nn

EMPTY = -1


class EmbeddingQueue(nn.Module):
    """FIFO of `size` embeddings of one modality, each tagged with its image id and caption id.

    The ids let a query drop entries that are not true negatives: an entry from the query's own
    image (another caption of it, or the image itself) or carrying the query's caption text.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be positive, got {size}, {dim}")
        self.size = size
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("image_ids", torch.full((size,), EMPTY, dtype=torch.long))
        self.register_buffer("caption_ids", torch.full((size,), EMPTY, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def filled(self) -> Tensor:
        """(size,) bool: which slots hold an entry."""
        return self.image_ids != EMPTY

    def __len__(self) -> int:
        return int(self.filled.sum())

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, image_ids: Tensor, caption_ids: Tensor) -> None:
        """Write a batch over the oldest entries (a batch larger than the queue keeps its tail)."""
        embeddings = embeddings.detach()[-self.size :]
        image_ids = image_ids[-self.size :]
        caption_ids = caption_ids[-self.size :]
        n = embeddings.shape[0]
        slots = (self.pointer + torch.arange(n, device=self.pointer.device)) % self.size
        self.embeddings[slots] = embeddings.to(self.embeddings.dtype)
        self.image_ids[slots] = image_ids.to(self.image_ids)
        self.caption_ids[slots] = caption_ids.to(self.caption_ids)
        self.pointer.copy_((self.pointer + n) % self.size)

    def negative_mask(self, image_ids: Tensor, caption_ids: Tensor) -> Tensor:
        """(B, size) bool: True where an entry may serve as a negative for each query."""
        same_image = image_ids[:, None] == self.image_ids[None, :]
        same_caption = caption_ids[:, None] == self.caption_ids[None, :]
        return self.filled[None, :] & ~same_image & ~same_caption
