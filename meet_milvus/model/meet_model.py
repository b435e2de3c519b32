"""The inference API: a trained MEET model encoding texts and images into vectors and codes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from meet_milvus.errors import ParameterError
from meet_milvus.inputs import check_count
from meet_milvus.model.config import ModelConfig
from meet_milvus.model.features import GridFeatureExtractor
from meet_milvus.model.hashing import pack_codes
from meet_milvus.model.network import MeetNet
from meet_milvus.model.onnx_text import OnnxTextPath
from meet_milvus.model.quantization import Quantizers
from meet_milvus.progress import progress_bar

# Captions -> encoder inputs (token ids, or the trainer's cached token states).
TextBatcher = Callable[[list[str]], dict[str, Tensor]]
# Encoder inputs -> (dense, hash head): `MeetNet.encode_text` or an `OnnxTextPath`.
TextPath = Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]]


@dataclass
class Encoded:
    """A batch of items in every representation the runtime stores or scores."""

    dense: np.ndarray  # (N, embed_dim) float32, l2-normalised: cosine = dot
    head: np.ndarray  # (N, H) float32 hash-head outputs in (-1, 1)
    hash_codes: np.ndarray  # (N, H // 8) uint8, meet_milvus.model.hashing.pack_codes(head)
    pq_codes: np.ndarray  # (N, M) uint8: nearest codeword per sub-space of `head`

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def __getitem__(self, rows: slice | np.ndarray) -> Encoded:
        """The same items' rows (a slice or an index array), every representation."""
        return Encoded(
            self.dense[rows], self.head[rows], self.hash_codes[rows], self.pq_codes[rows]
        )


class MeetModel:
    """Encoders, hash heads and PQ codebooks of one checkpoint, on one device.

    Built by `meet_milvus.model.load_checkpoint`; the trainer also wraps its live network in one to
    validate. `text_batcher` overrides how captions become encoder inputs (the trainer's cache);
    `text_path` what runs them (a checkpoint on the CPU: ONNX Runtime, `load_checkpoint`).
    """

    def __init__(
        self,
        net: MeetNet,
        quantizer: Quantizers,
        config: ModelConfig,
        device: str,
        text_batcher: TextBatcher | None = None,
        source: Path | None = None,
        cache_dir: Path | None = None,
        text_path: TextPath | None = None,
    ) -> None:
        self.net = net
        self.quantizer = quantizer
        self.config = config
        self.device = device
        self.source = source
        self.cache_dir = cache_dir  # where image files' grid features are cached (None: not)
        self._text_batcher = text_batcher or net.text_encoder.tokenize
        # What runs the text path: the network itself, or the same graph in ONNX Runtime.
        self._text_path = text_path or net.encode_text

    @property
    def codebooks(self) -> np.ndarray:
        """The stored codebooks, float32: (M, 2**K, H // M) shared by both modalities, or
        (2, M, 2**K, H // M), the image set then the text set (`config.pq_layout`)."""
        return self.quantizer.codebooks.detach().cpu().numpy().astype(np.float32)

    def codebooks_for(self, modality: str) -> np.ndarray:
        """(M, 2**K, H // M) float32: the set `modality`'s items are coded with, which a
        query searching them is scored against."""
        return self.quantizer[modality].codebooks.detach().cpu().numpy().astype(np.float32)

    @property
    def max_text_len(self) -> int:
        """Tokens a caption keeps; longer captions are truncated."""
        return self.config.max_text_len

    def load_text_model(self) -> None:
        """Reads a frozen transformer now rather than at the first caption it encodes (it loads
        lazily: image queries and cached encodings never need it)."""
        lazy = getattr(self.net.text_encoder, "_lazy", None)
        if lazy is not None:
            lazy.get()
        if isinstance(self._text_path, OnnxTextPath):
            self._text_path.load()

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per caption before truncation (compare with `max_text_len`)."""
        return self.net.text_encoder.count_tokens(list(texts))

    def _name(self) -> str:
        return f"checkpoint {self.source}" if self.source else "model"

    def encode_texts(
        self, texts: list[str], batch_size: int = 128, progress: bool = False
    ) -> Encoded:
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ParameterError(f"caption {i}: expected a string, got {type(t).__name__}")
            if not t.strip():
                raise ParameterError(f"caption {i}: empty text")
        return self._encode(
            len(texts),
            batch_size,
            progress,
            "text",
            lambda s, e: self._text_path(
                {k: v.to(self.device) for k, v in self._text_batcher(texts[s:e]).items()}
            ),
        )

    def encode_images(
        self, features: np.ndarray, batch_size: int = 128, progress: bool = False
    ) -> Encoded:
        features = np.asarray(features)
        if features.ndim not in (2, 3):
            raise ParameterError(
                f"image features of shape {features.shape}: expected (N, R, D) or (N, D)"
            )
        if features.shape[-1] != self.config.feature_dim:
            raise ParameterError(
                f"image features have dim {features.shape[-1]}, {self._name()} expects "
                f"{self.config.feature_dim}"
            )
        if not np.issubdtype(features.dtype, np.floating):
            raise ParameterError(f"image features of dtype {features.dtype}: expected floats")
        if features.ndim == 3 and features.shape[1] == 0:
            raise ParameterError(f"image features of shape {features.shape}: no regions")

        def run(s: int, e: int):
            x = torch.from_numpy(np.ascontiguousarray(features[s:e], dtype=np.float32))
            _check_finite(x, s, "features")
            out = self.net.encode_image(x.to(self.device))
            for encoded in out:  # finite features can still overflow (1e38)
                _check_finite(encoded, s, "features give embeddings that")
            return out

        return self._encode(len(features), batch_size, progress, "image", run)

    def encode_image_files(
        self, paths: list, batch_size: int = 32, progress: bool = False
    ) -> Encoded:
        """Raw images through the grid-feature extractor (EfficientNet-lite0 7x7x1280)."""
        paths = [paths] if isinstance(paths, str | Path) else list(paths)
        if not paths:
            return self.encode_images(np.zeros((0, self.config.feature_dim), np.float32))
        extractor = GridFeatureExtractor(device=self.device, cache_dir=self.cache_dir)
        features = extractor.extract(paths, batch_size=batch_size, progress=progress)
        return self.encode_images(features, batch_size=128, progress=progress)

    def pq_reconstruct(self, pq_codes: np.ndarray, modality: str) -> np.ndarray:
        """(N, M) codes of `modality`'s items -> (N, H) float32 codeword concatenations."""
        codes = np.asarray(pq_codes)
        if codes.ndim != 2 or codes.shape[1] != self.config.M:
            raise ParameterError(f"PQ codes of shape {codes.shape}: expected (N, {self.config.M})")
        if codes.size and (codes.min() < 0 or codes.max() >= 2**self.config.K):
            raise ParameterError(f"PQ codes out of range 0..{2**self.config.K - 1}")
        out = self.quantizer[modality].reconstruct(torch.from_numpy(codes.astype(np.int64)))
        return out.cpu().numpy().astype(np.float32)

    def _encode(self, n: int, batch_size: int, progress: bool, modality: str, run) -> Encoded:
        check_count(batch_size, "batch_size")
        dense, head = [], []
        with self._inference():
            steps = range(0, n, batch_size)
            desc = f"encode {modality}s"
            for s in progress_bar(steps, desc=desc, unit="batch", enabled=progress):
                d, h = run(s, min(n, s + batch_size))
                dense.append(d.float().cpu())
                head.append(h.float().cpu())
        c = self.config
        d = torch.cat(dense).numpy() if dense else np.zeros((0, c.embed_dim), np.float32)
        h = torch.cat(head).numpy() if head else np.zeros((0, c.H), np.float32)
        pq = self.quantizer[modality]
        codes = pq.encode(torch.from_numpy(h)).cpu().numpy().astype(np.uint8)
        return Encoded(dense=d, head=h, hash_codes=pack_codes(h), pq_codes=codes)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.net.training
        if was_training:  # a walk over every module: only when the mode must change
            self.net.eval()
        cuda = str(self.device).startswith("cuda")
        amp = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
        try:
            with torch.no_grad(), amp:
                yield
        finally:
            if was_training:
                self.net.train(True)


def _check_finite(x: torch.Tensor, first: int, what: str) -> None:
    """ParameterError naming the first image (counted from `first`) with a NaN or infinite value."""
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if bad.any():
        i = first + int(bad.nonzero()[0, 0])
        raise ParameterError(f"image {i}: {what} are not finite (NaN or infinity)")
