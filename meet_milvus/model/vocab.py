"""Word vocabulary for the BiGRU text encoder, built from the training captions."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return _WORD.findall(text.lower())


class Vocabulary:
    """Words to ids; id 0 is padding, unknown words map to <unk>."""

    def __init__(self, words: list[str]) -> None:
        self.words = list(words)
        if self.words[:4] != [PAD, START, END, UNK]:
            raise ValueError("a vocabulary starts with <pad>, <start>, <end>, <unk>")
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> Vocabulary:
        counts = Counter(w for t in texts for w in tokenize(t))
        # Sorted by (-count, word) so the same captions always give the same ids.
        kept = [w for w, c in counts.items() if c >= min_count]
        kept.sort(key=lambda w: (-counts[w], w))
        return cls([PAD, START, END, UNK, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def ids(self, text: str, max_len: int) -> list[int]:
        unk = self.index[UNK]
        body = [self.index.get(w, unk) for w in tokenize(text)][: max_len - 2]
        return [self.index[START], *body, self.index[END]]

    def batch(self, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
        """Padded ids (B, L) and lengths (B,)."""
        seqs = [self.ids(t, max_len) for t in texts]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        tokens = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return {"tokens": tokens, "lengths": lengths}

    def count_tokens(self, text: str) -> int:
        return len(tokenize(text)) + 2
