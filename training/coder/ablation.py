"""CODER's ablation table, produced by one command: `meet-train --objective coder --ablation`.

rSum on the test split of CODER's dense (fused) similarity with each part removed in turn, next to
MEET's own run on the same split, and the hash-only / PQ-only rSum of MEET's heads trained on the
full CODER encoder (`--init_from` it, encoders frozen). Every run has the same seed, data and
schedule; flags given on the command line apply to every run.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from meet_milvus.config import Settings
from meet_milvus_loaders.precomp import load_split, write_split
from meet_milvus_training.ablation import rsum_rows, train_runs, write_result
from meet_milvus_training.coder.config import CoderConfig
from meet_milvus_training.config import TrainConfig

# Removing one part at a time from the full model.
VARIANTS: list[tuple[str, str, dict[str, bool]]] = [
    ("coder-full", "CODER (full)", {}),
    ("coder-no-queue", "CODER - momentum queue", {"momentum_queue": False}),
    ("coder-no-adaptive", "CODER - adaptive weighting", {"adaptive_weighting": False}),
    ("coder-no-concepts", "CODER - concept branch", {"concept_branch": False}),
    ("coder-no-clusters", "CODER - clustering loss", {"cluster_loss": False}),
]
# The ablation's schedule where the command line does not set one, and the share of the training
# and dev splits it trains and selects on (the test split is used whole): small enough that the
# seven runs fit in about 20 minutes on 2 shared CPU cores with the demo set.
SCHEDULE: dict[str, object] = {"num_epochs": 1, "embed_size": 256}
TRAIN_IMAGES, DEV_IMAGES = 600, 200


def ablation_data(settings: Settings, name: str, seed: int) -> str:
    """Writes data set `{name}-coder-ablation`: TRAIN_IMAGES random train images, DEV_IMAGES dev
    images and the whole test split of `name`; returns its name."""
    derived = f"{name}-coder-ablation"
    rng = np.random.default_rng(seed)
    for split, n in (("train", TRAIN_IMAGES), ("dev", DEV_IMAGES), ("test", None)):
        data = load_split(settings.data_dir, name, split)
        if n is not None and n < data.n_images:
            data = data.subset(np.sort(rng.choice(data.n_images, n, replace=False)), split)
        write_split(settings.data_dir, replace(data, name=derived))
    return derived


def ablation_configs(config: TrainConfig, root: Path) -> list[tuple[str, str, TrainConfig]]:
    """(slug, row name, config) of every run, in table order."""
    given = config.model_fields_set
    base = config.model_copy(update={k: v for k, v in SCHEDULE.items() if k not in given})
    coder = base.coder or CoderConfig()
    runs = [
        (
            slug,
            name,
            base.model_copy(
                update={
                    "objective": "coder",
                    "coder": coder.model_copy(update=switches),
                    "select": "dense",
                }
            ),
        )
        for slug, name, switches in VARIANTS
    ]
    meet = base.model_copy(update={"objective": "meet", "coder": None})
    runs.append(("meet", "MEET", meet.model_copy(update={"select": "dense"})))
    runs.append(
        (
            "meet-heads-on-coder",
            "MEET heads on the CODER encoder",
            meet.model_copy(update={"init_from": str(root / "coder-full"), "select": "sum"}),
        )
    )
    return runs


def table(rows: list[dict], config: TrainConfig) -> str:
    """Markdown table; CODER trains no code heads, so its hash/PQ cells stay empty."""
    lines = [
        f"rSum on the whole {config.data_name} test split; each run trained on {TRAIN_IMAGES} "
        f"train images for {rows[0]['epochs']} epochs, best of them on {DEV_IMAGES} dev images "
        f"(embed {rows[0]['embed']}, text {config.text_encoder}, seed {config.seed}; "
        "`meet-train --objective coder --ablation`)",
        "",
    ]
    return "\n".join(lines + rsum_rows(rows)) + "\n"


def run_coder_ablation(
    config: TrainConfig,
    settings: Settings,
    output: Path | None = None,
    progress: bool = True,
    log=print,
) -> str:
    """Train every run under `output` (default {data_dir}/checkpoints/{data_name}-coder-ablation),
    write the table to {data_dir}/results/coder_ablation_{data_name}.md and return it."""
    root = Path(
        output or Path(settings.data_dir) / "checkpoints" / f"{config.data_name}-coder-ablation"
    )
    started = time.perf_counter()
    data_name = ablation_data(settings, config.data_name, config.seed)
    config = config.model_copy(update={"data_name": data_name})
    rows = train_runs(ablation_configs(config, root), settings, root, progress, log)
    text = table(rows, config)
    text += f"\nAll {len(rows)} runs: {(time.perf_counter() - started) / 60:.1f} min.\n"
    return write_result(settings, f"coder_ablation_{config.data_name}.md", text, log)
