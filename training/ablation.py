"""The README's ablation table, produced by one command (`meet-train --ablation`):

rSum on the test split for dense, hash-only (Hamming ranking) and PQ-only (ADC) retrieval, for
(1) ranking loss only, (2) + L_f, (3) + L_q, (4) + negative filtering and reweighting (= MEET).
Every configuration trains from the same seed with the same other hyper-parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from meet_milvus.config import Settings
from meet_milvus.errors import DataSetError
from meet_milvus_training.config import TrainConfig
from meet_milvus_training.evaluate import rsums
from meet_milvus_training.trainer import train

CONFIGURATIONS: list[tuple[str, str, dict[str, bool]]] = [
    ("1-rank", "(1) ranking loss only", dict(lf=False, lq=False, filter=False, reweight=False)),
    ("2-lf", "(2) + L_f", dict(lf=True, lq=False, filter=False, reweight=False)),
    ("3-lq", "(3) + L_q", dict(lf=True, lq=True, filter=False, reweight=False)),
    (
        "4-meet",
        "(4) + filtering and reweighting",
        dict(lf=True, lq=True, filter=True, reweight=True),
    ),
]


def table(rows: list[dict], config: TrainConfig) -> str:
    """Markdown table of the rows (name, rsums, seconds) with the command and settings above."""
    schedule = (
        f"at most {config.num_epochs}, patience {config.patience}"
        if config.patience
        else str(config.num_epochs)
    )
    lines = [
        f"rSum on the {config.data_name} test split (best dev epoch of {schedule}; "
        f"text {config.text_encoder}, H={config.H}, M={config.M}, K={config.K}, "
        f"seed {config.seed})",
        "",
    ]
    return "\n".join(lines + rsum_rows(rows)) + "\n"


def rsum_rows(rows: list[dict]) -> list[str]:
    """Markdown table lines for rows of (name, dense, hash, pq, seconds); a row whose
    `codes` is False (an objective without code heads) shows no hash/PQ figures."""
    lines = [
        "| configuration | dense | hash only (Hamming) | PQ only (ADC) | train time |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        codes = r.get("codes", True)
        hash_, pq = (f"{r['hash']:.1f}", f"{r['pq']:.1f}") if codes else ("—", "—")
        lines.append(
            f"| {r['name']} | {r['dense']:.1f} | {hash_} | {pq} | {r['seconds'] / 60:.1f} min |"
        )
    return lines


def run_ablation(
    config: TrainConfig,
    settings: Settings,
    output: Path | None = None,
    progress: bool = True,
    log=print,
) -> str:
    """Train the four configurations under `output` (default {data_dir}/checkpoints/
    {data_name}-ablation/), write the table to {data_dir}/results/ablation_{data_name}.md and
    return it."""
    root = (
        Path(output)
        if output
        else Path(settings.data_dir) / "checkpoints" / (f"{config.data_name}-ablation")
    )
    runs = [(slug, name, config.model_copy(update=sw)) for slug, name, sw in CONFIGURATIONS]
    text = table(train_runs(runs, settings, root, progress, log), config)
    return write_result(settings, f"ablation_{config.data_name}.md", text, log)


def train_runs(
    runs: list[tuple[str, str, TrainConfig]],
    settings: Settings,
    root: Path,
    progress: bool,
    log: Callable[[str], None],
) -> list[dict]:
    """Train every (slug, row name, config) under root/slug; per run a row of its best
    checkpoint's test rSums (name, dense, hash, pq), whether it has codes, its schedule and
    its time."""
    rows = []
    for slug, name, run in runs:
        log(f"== {name}")
        t0 = time.perf_counter()
        result = train(run, settings, output=root / slug, progress=progress, log=log)
        if result.test is None:
            raise DataSetError(f"data set {run.data_name!r}: no test split to report")
        rows.append(
            {
                "name": name,
                **rsums(result.test),
                "codes": run.objective != "coder",  # CODER trains no code heads
                "epochs": run.num_epochs,
                "embed": run.embed_size,
                "seconds": time.perf_counter() - t0,
            }
        )
    return rows


def write_result(settings: Settings, filename: str, text: str, log: Callable[[str], None]) -> str:
    """`text` into {data_dir}/results/`filename`, logged; returns it."""
    out = Path(settings.data_dir) / "results" / filename
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(text)
    log(f"written to {out}")
    return text
