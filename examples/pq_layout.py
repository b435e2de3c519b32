"""PQ codebooks shared by images and texts against one set per modality, on the demo dev split.

    python examples/pq_layout.py --seeds 0 1 2 --num_epochs 1

For each layout and seed: train MEET on the demo (checkpoints under
data_dir/checkpoints/pqlayout/, reused when one of the same run exists), load its dev split as a
gallery (`pqlayout_<layout>_s<seed>`), and score PQ only (ADC over the whole gallery) and the
cascade (Hamming -> PQ -> exact, the searcher's defaults) through Milvus. Prints one row per run
and the mean and standard deviation of each layout.
"""

from __future__ import annotations

import argparse
import statistics

from meet_milvus import MeetSearcher, load_settings, milvus_eval
from meet_milvus.model.checkpoint import read_config
from meet_milvus_loaders.milvus_loader import encode_split, load
from meet_milvus_loaders.precomp import load_split
from meet_milvus_training.config import TrainConfig
from meet_milvus_training.trainer import train

METHODS = ("PQ only", "cascade")


def checkpoint(settings, layout: str, seed: int, epochs: int):
    """The run's checkpoint, trained unless one of the same run is there."""
    out = settings.data_dir / "checkpoints" / "pqlayout" / f"{layout}-s{seed}"
    config = TrainConfig(data_name="demo", num_epochs=epochs, seed=seed, pq_layout=layout)
    if (out / "config.json").is_file():
        done = TrainConfig.model_validate(read_config(out).train)
        if (done.seed, done.pq_layout, done.num_epochs) == (seed, layout, epochs):
            return out
    train(config, settings, output=out, progress=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num_epochs", type=int, default=1)
    parser.add_argument("--layouts", nargs="+", default=["shared", "per_modality"])
    args = parser.parse_args()
    settings = load_settings()
    split = load_split(settings.data_dir, "demo", "dev")
    rows: dict[str, list[tuple[float, ...]]] = {}
    print("| layout | seed | dense (model) | PQ only | cascade |")
    print("|---|---:|---:|---:|---:|")
    for layout in args.layouts:
        for seed in args.seeds:
            path = checkpoint(settings, layout, seed, args.num_epochs)
            gallery = f"pqlayout_{layout}_s{seed}"
            load(settings, gallery, checkpoint=path, data="demo", split="dev", progress=False)
            searcher = MeetSearcher(gallery, checkpoint=path, settings=settings)
            images, texts = encode_split(searcher.model, split, settings.cache_dir, 128, False)
            queries = {"i2t": images, "t2i": texts}
            found = [milvus_eval.run_method(searcher, m, split, queries).recall.rsum
                     for m in METHODS]  # fmt: skip
            dense = read_config(path).scores["dense"]
            rows.setdefault(layout, []).append((dense, *found))
            print(f"| {layout} | {seed} | {dense:.1f} | {found[0]:.1f} | {found[1]:.1f} |",
                  flush=True)  # fmt: skip
    print(f"\nmean ± sd over seeds {args.seeds}\n")
    print("| layout | dense (model) | PQ only | cascade |")
    print("|---|---:|---:|---:|")
    for layout, runs in rows.items():
        cells = []
        for values in zip(*runs, strict=True):
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {sd:.1f}")
        print(f"| {layout} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
