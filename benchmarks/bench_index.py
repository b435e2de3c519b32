"""How fast `meet-milvus index` takes in a folder of new photos, and where the time goes.

    python -m benchmarks.bench_index --photos 300 --out benchmarks/results/index

Makes `--photos` distinct PNG files (the demo's stamps, each with its own faint noise, so no
two share a content hash and the feature cache never answers), then indexes them into a new
gallery of the embedded Milvus with the demo checkpoint, timing the whole add (photos/s) and,
on a second copy of the folder with an empty feature cache, the grid-feature extraction alone.
Needs `meet-milvus data demo` and the demo checkpoint (examples/demo.sh makes both).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import click
import numpy as np
from PIL import Image

from benchmarks.measure import free_port, load_avg, report
from meet_milvus.config import load_settings
from meet_milvus.model.features import GridFeatureExtractor
from meet_milvus.server import EmbeddedServer
from meet_milvus.writer import GalleryWriter
from meet_milvus_loaders.milvus_loader import training_pool
from meet_milvus_loaders.photos import collect
from meet_milvus_loaders.precomp import load_split


def make_photos(sources: list[str], n: int, folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
        noisy = np.clip(pixels + rng.integers(-2, 3, pixels.shape), 0, 255).astype(np.uint8)
        sub = folder / f"album{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(sub / f"photo{i:05d}.png")


@click.command()
@click.option("--photos", default=300, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None)
def main(photos: int, out: Path | None) -> None:
    user = load_settings()
    checkpoint = user.data_dir / "checkpoints" / "demo"
    sources = load_split(user.data_dir, "demo", "test").image_paths
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        settings = load_settings(data_dir=tmp / "data", cache_dir=tmp / "cache",
                                 embedded_port=free_port(), device="cpu")  # fmt: skip
        # The user's cached server binaries and encodings (the pool's) are reused; the photos
        # are new, so their features are computed, into the temporary cache.
        settings.cache_dir.mkdir(parents=True)
        for part in ("milvus", "encoded"):
            if (user.cache_dir / part).is_dir():
                (settings.cache_dir / part).symlink_to(user.cache_dir / part)
        settings.data_dir.mkdir(parents=True)
        # The demo's data set (for the reference pool) without copying it: a link.
        (settings.data_dir / "demo_precomp").symlink_to(user.data_dir / "demo_precomp")
        make_photos(sources, photos, tmp / "photos")
        shutil.copytree(tmp / "photos", tmp / "again")
        server = EmbeddedServer(settings)
        server.start()
        try:
            writer = GalleryWriter("bench_photos", checkpoint, settings)
            start = time.perf_counter()
            writer.pool = training_pool(settings, writer.model, progress=False)
            pool_s = time.perf_counter() - start
            items = collect([tmp / "photos"])
            start = time.perf_counter()
            added = writer.add(items)
            add_s = time.perf_counter() - start
            fresh = GridFeatureExtractor("cpu", tmp / "cache-empty")
            start = time.perf_counter()
            fresh.extract([it.image for it in collect([tmp / "again"])], progress=False)
            features_s = time.perf_counter() - start
            start = time.perf_counter()
            again = writer.add(items)
            unchanged_s = time.perf_counter() - start
        finally:
            server.stop()
    result = {
        "photos": photos, "load_avg": load_avg(), "pool_s": round(pool_s, 1),
        "add_s": round(add_s, 2), "photos_per_s": round(photos / add_s, 2),
        "features_s": round(features_s, 2), "features_share": round(features_s / add_s, 3),
        "reindex_unchanged_s": round(unchanged_s, 2), "added": added.added,
        "unchanged_on_reindex": again.unchanged,
    }  # fmt: skip
    lines = [
        f"Indexing {photos} new photos (demo checkpoint, embedded Milvus, 2 cores):",
        f"- whole add: {add_s:.1f} s = {photos / add_s:.2f} photos/s",
        f"- grid features alone (empty cache): {features_s:.1f} s "
        f"({100 * features_s / add_s:.0f}% of the add)",
        f"- the same folder again (nothing changed): {unchanged_s:.1f} s",
        f"- the reference pool (once per new gallery, cached encodings): {pool_s:.1f} s",
    ]
    report(lines, result, out)


if __name__ == "__main__":
    main()
