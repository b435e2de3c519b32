"""A gallery that grows: search quality and latency before, during and after adds, against the
same items loaded from scratch; how long until an added item is returned; deleted items never
returned; rows/s of adds into Milvus + local tier; and how far the ANN index can follow a
growing gallery before it must be trained again.

    python -m benchmarks.bench_incremental --rows 100000 --grow 0.1 --batch 1000 \
        --out benchmarks/results/incremental

A synthetic gallery (benchmarks.synthetic: clustered unit vectors with MEET-like codes, items
drawn from one distribution) goes into the embedded Milvus through the product's write path
(`append_items`: logged changes; `append_rows`: the local tier's segments):

1. `--rows` items, then `--grow` of that in batches of `--batch`; after each batch the reader's
   next call (`TierSync`) must return the batch's first item for its own vector (seconds from
   the start of the add until then); the ANN cascade's p50 and recall@10 (against exact search
   over the live items) before, at four points during, and after the growth; then the same
   items loaded at once ("scratch", ANN trained on all of them) searched the same way;
   finally every tenth added item deleted, and no search may return one.
2. The grown gallery grows on to twice `--rows` in four steps; at each, recall of the ANN index
   trained on the first `--rows` items (new rows only added to its lists) against one trained
   anew on every item: the growth at which training again starts to pay (ANN_REBUILD_GROWTH).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from benchmarks.measure import free_port, load_avg, report
from benchmarks.synthetic import SyntheticSpec, exact_topk, generate
from meet_milvus.cascade import AnnFilter, Cascade, ExactRescore
from meet_milvus.config import Settings
from meet_milvus.gallery_layout import MODALITIES, open_gallery
from meet_milvus.gallery_log import gallery_state
from meet_milvus.gallery_rows import Items, Origin, append_items, create_gallery, delete_items
from meet_milvus.model.meet_model import Encoded
from meet_milvus.pool import Pool
from meet_milvus.reader import TierSync, open_tier
from meet_milvus.search_config import SearchConfig
from meet_milvus.server import EmbeddedServer, connect
from meet_milvus.tier import LocalTier
from meet_milvus.tier_write import append_rows, build_ann, mark_deleted, rebuild_ann

K = 10
KEEP, NPROBE = SearchConfig().ann_keep, SearchConfig().ann_nprobe  # the product's defaults


def _queries(dense: np.ndarray) -> Encoded:
    n = len(dense)
    return Encoded(dense, np.zeros((n, 1)), np.zeros((n, 1), np.uint8), np.zeros((n, 1)))


class Growing:
    """One synthetic gallery in Milvus and its local tier, written as the writer writes."""

    def __init__(self, client, settings, name: str, g, pool: Pool) -> None:
        self.client, self.g, self.pool = client, g, pool
        s = g.spec
        origin = Origin("f" * 16, s.bits, s.pq_m, s.pq_nbits, "synthetic")
        create_gallery(client, name, origin, s.dim, 8, pool)
        self.gallery = open_gallery(client, name)
        self.state = gallery_state(client, self.gallery)
        tiers = {m: open_tier(client, self.gallery, m, settings, state=self.state)
                 for m in MODALITIES}  # fmt: skip
        self.tier: LocalTier = tiers["image"]
        self.sync = TierSync(client, self.gallery, self.tier)

    @property
    def rows(self) -> int:
        return self.state.bound["image"]

    def add(self, n: int) -> float:
        """Append the next n items; seconds it took (Milvus and tier)."""
        lo, g = self.rows, self.g
        start = time.perf_counter()
        dense = np.asarray(g.dense[lo : lo + n], np.float32)
        enc = Encoded(dense, g.head[lo : lo + n], g.hash_codes[lo : lo + n],
                      g.pq_codes[lo : lo + n])  # fmt: skip
        ext = [f"item{i}" for i in range(lo, lo + n)]
        items = Items(enc, ext, ext, np.arange(lo, lo + n), self.pool.stats("image", dense, 8),
                      [f"d{i}" for i in range(lo, lo + n)])  # fmt: skip
        change = append_items(self.client, self.gallery, "image", items, lo,
                              self.state.generation + 1)  # fmt: skip
        append_rows(self.tier.path, lo, items.chunks(), change.generation)
        self.state.apply(change)
        return time.perf_counter() - start

    def search(self, tier: LocalTier | None = None) -> dict:
        """p50 ms and recall@10 of the ANN cascade (product defaults) on the live items."""
        tier = tier or self.sync()
        cascade = Cascade([AnnFilter(tier, keep=KEEP, nprobe=NPROBE), ExactRescore(tier, keep=K)])
        q = self.g.q_dense
        dead = tier.dead()
        live = np.arange(tier.rows) if dead is None else np.flatnonzero(~dead)
        truth = live[exact_topk(q, self.g.dense[live], K)[0]]
        times, found = [], []
        for row in q:
            start = time.perf_counter()
            found.append(cascade(_queries(row[None])).ids[0, :K])
            times.append(time.perf_counter() - start)
        recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)])
        hits = np.concatenate(found)
        returned_dead = int(dead[hits[hits >= 0]].sum()) if dead is not None else 0
        return {
            "rows": int(tier.rows), "live": int(len(live)),
            "p50_ms": round(1000 * statistics.median(times), 3),
            "recall@10": round(float(recall), 4), "deleted_returned": returned_dead,
        }  # fmt: skip

    def returned(self, item: int) -> bool:
        """The reader's next call returns `item` for its own vector (every list probed)."""
        tier = self.sync()
        probe = np.asarray(self.g.dense[item : item + 1], np.float32)
        cascade = Cascade([AnnFilter(tier, keep=KEEP, nprobe=1.0), ExactRescore(tier, keep=K)])
        return item in cascade(_queries(probe)).ids[0]


@click.command()
@click.option("--rows", default=100_000, show_default=True)
@click.option("--grow", default=0.1, show_default=True, help="fraction of --rows added")
@click.option("--batch", default=1000, show_default=True)
@click.option("--dim", default=256, show_default=True)
@click.option("--queries", default=200, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None)
@click.option("--render", "render_json", type=click.Path(path_type=Path, exists=True),
              help="lay out an earlier RESULT.json again (to --out) instead of measuring")
def main(rows: int, grow: float, batch: int, dim: int, queries: int, out: Path | None,
         render_json: Path | None) -> None:  # fmt: skip
    if render_json is not None:
        result = json.loads(render_json.read_text())
        report(render(result), result, out)
        return
    added = int(rows * grow)
    g = generate(SyntheticSpec(n_items=2 * rows, n_queries=queries, dim=dim), progress=False)
    pool = Pool.sample({"image": np.asarray(g.dense[:2000], np.float32),
                        "text": np.asarray(g.q_dense, np.float32)}, "synthetic")  # fmt: skip
    result: dict = {"rows": rows, "added": added, "batch": batch, "dim": dim,
                    "queries": queries, "load_avg_start": load_avg()}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=tmp, embedded_port=free_port(), device="cpu")
        server = EmbeddedServer(settings)
        server.start()
        try:
            client = connect(settings)
            grown = Growing(client, settings, "grown", g, pool)
            start = time.perf_counter()
            for _ in range(0, rows, 50_000):
                grown.add(min(50_000, rows - grown.rows))
            rebuild_ann(grown.tier.path)
            result["load_rows_per_s"] = round(rows / (time.perf_counter() - start), 1)
            result["before"] = grown.search()
            add_s, visible_s, during = [], [], []
            quarter = max(1, added // batch // 4)
            for n, _lo in enumerate(range(rows, rows + added, batch), start=1):
                first = grown.rows
                start = time.perf_counter()
                add_s.append(grown.add(min(batch, rows + added - first)))
                visible_s.append(time.perf_counter() - start if grown.returned(first) else None)
                if n % quarter == 0:
                    during.append(grown.search())
            result["during"] = during
            result["after"] = grown.search()
            result["add_rows_per_s"] = round(added / sum(add_s), 1)
            result["add_batch_s_p50"] = round(statistics.median(add_s), 3)
            seen = [v for v in visible_s if v is not None]
            result["added_item_returned_after_s_p50"] = round(statistics.median(seen), 3)
            result["added_items_not_returned"] = visible_s.count(None)

            scratch = Growing(client, settings, "scratch", g, pool)
            for _ in range(0, rows + added, 50_000):
                scratch.add(min(50_000, rows + added - scratch.rows))
            rebuild_ann(scratch.tier.path)
            result["scratch"] = scratch.search()

            doomed = np.arange(rows, rows + added, 10)
            changes = delete_items(client, grown.gallery, "image", doomed,
                                   grown.state.generation + 1)  # fmt: skip
            for change in changes:
                grown.state.apply(change)
            mark_deleted(grown.tier.path, doomed, changes[-1].generation)
            result["after_delete"] = grown.search()

            growth = []
            for target in np.linspace(rows + added, 2 * rows, 5)[1:].astype(int):
                grown.add(int(target) - grown.rows)
                kept = grown.search()
                tier = grown.sync()
                fresh = LocalTier(tier.path, tier.meta, {**tier.info,
                                  "ann": build_ann(tier, tier.generation)})  # fmt: skip
                growth.append({"growth": round(tier.rows / rows - 1, 3),
                               "recall_kept_index": kept["recall@10"],
                               "recall_trained_again": grown.search(fresh)["recall@10"],
                               "p50_ms_kept": kept["p50_ms"]})  # fmt: skip
            result["ann_growth"] = growth
        finally:
            server.stop()
    result["load_avg_end"] = load_avg()
    report(render(result), result, out)


def render(result: dict) -> list[str]:
    """The markdown of a result (also `--render RESULT.json`: the same figures, laid out)."""
    lines = [f"Growing a {result['rows']:,}-item synthetic gallery by {result['added']:,} in "
             f"batches of {result['batch']:,} (dim {result['dim']}, {result['queries']} queries, "
             f"ANN nprobe {NPROBE}, keep {KEEP}; load average {result['load_avg_start']} at the "
             f"start, {result['load_avg_end']} at the end)", "",
             "| state | items | p50 ms | recall@10 | deleted returned |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    rows_out = [("before", result["before"])]
    rows_out += [("during", d) for d in result["during"]]
    rows_out += [("after", result["after"]), ("loaded from scratch", result["scratch"]),
                 ("after deleting every 10th added", result["after_delete"])]  # fmt: skip
    for label, r in rows_out:
        lines.append(f"| {label} | {r['live']:,} | {r['p50_ms']:.2f} | {r['recall@10']:.3f} | "
                     f"{r['deleted_returned']} |")  # fmt: skip
    lines += ["", f"adds: {result['add_rows_per_s']:,.0f} rows/s into Milvus + tier (batch p50 "
              f"{result['add_batch_s_p50']:.2f} s); an added item is returned "
              f"{result['added_item_returned_after_s_p50']:.2f} s (p50) after its add began; "
              f"not returned: {result['added_items_not_returned']}", "",
              "| growth since the ANN index was trained | recall@10 kept | trained again |",
              "|---:|---:|---:|"]  # fmt: skip
    for r in result["ann_growth"]:
        lines.append(f"| +{100 * r['growth']:.0f}% | {r['recall_kept_index']:.3f} | "
                     f"{r['recall_trained_again']:.3f} |")  # fmt: skip
    return lines



if __name__ == "__main__":
    main()
