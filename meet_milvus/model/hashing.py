"""Deep hashing: a linear + tanh head per modality, its sign packed into bytes, Hamming."""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

# Set bits per byte value, for Hamming distances on packed codes.
_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.int32)


class HashHead(nn.Module):
    """(B, E) unit vectors -> (B, H) in (-1, 1); the code is its sign.

    Initialised as random-hyperplane LSH (SimHash): Gaussian weights, zero bias, so from the
    first step the code's Hamming distances follow the dense angles, and pre-activations of a
    unit input have unit scale (the default init would leave tanh near 0, where signs are noise).
    """

    def __init__(self, embed_dim: int, bits: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embed_dim, bits)
        nn.init.normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x).tanh()


def code_bits(head: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """The sign rule, the one place it is written: a code bit is set where the head output is
    >= 0 (numpy or torch, same shape, bool).

    `>= 0`, as MEET's reference (HammingD: `2 * (A >= 0) - 1`), so that every output, 0
    included, is a code value +-1: `x > 0` would make 0 a -1 bit while torch's `sign()` makes it
    a 0 target, so training and codes would disagree there. Exact zeros are rare (a zero
    pre-activation), so codes made before this rule was pinned match it in practice.
    """
    return head >= 0


def pack_codes(head: np.ndarray) -> np.ndarray:
    """(N, H) head outputs -> (N, H // 8) uint8 of their `code_bits` (big bit order)."""
    return np.packbits(code_bits(np.asarray(head)), axis=1)


def hamming(a: np.ndarray, b: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(Na, Nb) int32 Hamming distances between packed codes (Na, B) and (Nb, B)."""
    a, b = np.asarray(a, dtype=np.uint8), np.asarray(b, dtype=np.uint8)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    for s in range(0, a.shape[0], chunk):
        xor = a[s : s + chunk, None, :] ^ b[None, :, :]
        out[s : s + chunk] = _POPCOUNT[xor].sum(-1)
    return out
