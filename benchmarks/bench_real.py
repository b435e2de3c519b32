"""Second stages compared on REAL encodings: the demo checkpoint's codes of the demo's images and
captions, not a synthetic stand-in.

    python -m benchmarks.bench_real --out benchmarks/results/real

Galleries (all encoded by the demo checkpoint, `{data_dir}/checkpoints/demo`):
- `demo test images`: the 1,000 test images, queried by their 5,000 captions;
- `demo captions, all splits`: the 27,500 captions of train + dev + test, queried by the 1,000
  test images (a larger real gallery built offline from the demo's data).

For each, the candidates each code needs to hold 95% of the exact dense top-10 when it ranks the
whole gallery by its own score: MEET's 64-bit hash (Hamming; ties in id order), MEET's PQ
(8 bytes, ADC on the head), the unquantized 64-d head, PQ of the dense vectors (32 sub-spaces,
32 B), RaBitQ of a PCA-256 projection (flat, 40 B), and the product's ANN index (IVF over those
RaBitQ codes) at several nprobe. Then both product cascades end to end on the same gallery,
through the local tier built from the benchmark's Milvus: recall@10 against exact and p50 ms.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import faiss
import numpy as np

from benchmarks.bench_cascade import milvus
from benchmarks.measure import load_avg, needed, per_query, recall_at_k
from meet_milvus import gallery_layout as cols
from meet_milvus.cascade import AnnFilter, Cascade, ExactRescore, HammingFilter, QuantizedFilter
from meet_milvus.config import load_settings
from meet_milvus.gallery_rows import Origin, write_gallery
from meet_milvus.model import Encoded, load_checkpoint
from meet_milvus.model.quantization import adc_scores, adc_tables
from meet_milvus.reader import open_tier
from meet_milvus.search_config import SearchConfig
from meet_milvus.tier_write import ann_nlist
from meet_milvus_loaders.milvus_loader import encode_split, split_items
from meet_milvus_loaders.precomp import Split, load_split

K = 10
DEPTH = 5000  # ranked list length scored per code


def exact_top(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ gallery.T
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def ranked(scores: np.ndarray, depth: int) -> np.ndarray:
    """Ids by descending score, ties in id order, first `depth`."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :depth]


def code_needs(q: Encoded, g: Encoded, codebooks: np.ndarray, truth: np.ndarray) -> dict:
    depth = min(DEPTH, len(g))
    out: dict[str, dict] = {}
    qw, gw = q.hash_codes.view(np.uint64), g.hash_codes.view(np.uint64)
    ham = np.stack([np.bitwise_count(gw ^ w).sum(axis=1) for w in qw])
    out["MEET hash 64 bit (8 B)"] = {"needed": needed(ranked(-ham, depth), truth), "bytes": 8}
    adc = adc_scores(adc_tables(q.head, codebooks), g.pq_codes)
    out["MEET PQ on the head (8 B)"] = {"needed": needed(ranked(adc, depth), truth), "bytes": 8}
    out["MEET head, unquantized (256 B)"] = {
        "needed": needed(ranked(q.head @ g.head.T, depth), truth), "bytes": 4 * g.head.shape[1]}
    dim = g.dense.shape[1]
    for label, factory, nbytes in (
        ("PQ32 of the dense vector (32 B)", "PQ32", 32),
        (f"RaBitQ of PCA-{min(256, dim)} (flat, 40 B)", f"PCAR{min(256, dim)},RaBitQ", 40),
    ):
        index = faiss.index_factory(dim, factory, faiss.METRIC_L2)
        index.train(g.dense)
        index.add(g.dense)
        _, ids = index.search(q.dense, depth)
        out[label] = {"needed": needed(ids, truth), "bytes": nbytes}
    nlist = ann_nlist(len(g))
    index = faiss.index_factory(dim, f"PCAR{min(256, dim)},IVF{nlist},RaBitQ", faiss.METRIC_L2)
    index.train(g.dense)
    index.add(g.dense)
    for frac in (0.05, 0.1, 0.2):
        nprobe = max(1, round(frac * nlist))
        params = faiss.SearchParametersPreTransform(
            index_params=faiss.IVFSearchParameters(nprobe=nprobe))
        _, ids = index.search(q.dense, depth, params=params)
        out[f"ANN: IVF{nlist} nprobe={nprobe} over RaBitQ (~48 B)"] = {
            "needed": needed(ids, truth), "bytes": 48}
    return out


def end_to_end(client, settings, name: str, gallery_m: str, q: Encoded, truth: np.ndarray,
               codebooks: np.ndarray) -> dict:  # fmt: skip
    """Both product cascades on the gallery's local tier: recall@10 vs exact, p50 ms."""
    gallery = cols.open_gallery(client, name)
    tier = open_tier(client, gallery, gallery_m, settings)
    cfg = SearchConfig()
    rows = gallery.rows(gallery_m)
    cascades = {
        "MEET: Hamming -> PQ -> exact (defaults)": Cascade([
            HammingFilter(tier, keep=cfg.hash_keep(gallery_m), mode=cfg.hash_mode),
            QuantizedFilter(tier, codebooks, keep=cfg.pq_keep(gallery_m), mode=cfg.pq_mode),
            ExactRescore(tier, keep=K)]),
        "ANN -> exact (defaults)": Cascade([
            AnnFilter(tier, keep=cfg.ann_keep, nprobe=cfg.ann_nprobe),
            ExactRescore(tier, keep=K)]),
    }  # fmt: skip
    out = {}
    for label, cascade in cascades.items():
        res = per_query(lambda r, c=cascade: c(q[r]), 200)
        found = np.concatenate([cascade(q[lo : lo + 256]).ids for lo in range(0, len(q), 256)])
        res["recall@10"] = recall_at_k(found, truth)
        out[label] = res
    out["rows"] = rows
    gallery.release(client)
    return out


def all_captions(data_dir: Path) -> Split:
    """Every caption of train + dev + test as one split (images: the test split's, unused)."""
    parts = [load_split(data_dir, "demo", s) for s in ("train", "dev", "test")]
    captions = [c for p in parts for c in p.captions]
    offsets = np.cumsum([0] + [p.n_images for p in parts[:-1]])
    images = np.concatenate([p.images for p in parts])
    ci = np.concatenate([p.caption_image + o for p, o in zip(parts, offsets, strict=True)])
    return Split("demo", "all", images, captions, ci.astype(np.int64))


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="meet data dir with demo_precomp/ and checkpoints/demo [the settings']")
@click.option("--bench-dir", type=click.Path(path_type=Path), default=Path("/tmp/meet-bench"))
@click.option("--port", default=19571, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def main(data_dir: Path | None, bench_dir: Path, port: int, out: Path) -> None:  # fmt: skip
    """Candidates needed and end-to-end recall of each second stage on real encodings."""
    settings = load_settings(**({"data_dir": data_dir} if data_dir else {}), device="cpu")
    model = load_checkpoint(settings.data_dir / "checkpoints" / "demo", "cpu")
    codebooks = model.codebooks
    client, _server, bench_settings = milvus(bench_dir, port)
    res: dict = {"command": f"python -m benchmarks.bench_real --out {out}",
                 "load_start": load_avg(), "galleries": {}}  # fmt: skip
    test = load_split(settings.data_dir, "demo", "test")
    big = all_captions(settings.data_dir)
    for label, split, gallery_m in (
        ("demo test images (t2i)", test, "image"),
        ("demo captions, all splits (i2t)", big, "text"),
    ):
        click.echo(f"== {label}")
        images, texts = encode_split(model, split, settings.cache_dir, 128, True)
        g, q = (images, texts) if gallery_m == "image" else (texts, images[-1000:])
        truth = exact_top(q.dense, g.dense, K)
        entry = {"gallery_rows": len(g), "queries": len(q)}
        entry["needed_for_95pct"] = code_needs(q, g, codebooks, truth)
        name = "real_" + split.split
        items = split_items(split, images, texts)
        start = time.perf_counter()
        origin = Origin.of(model, f"demo/{split.split}")
        write_gallery(client, name, items, origin, progress=False)
        entry["load_s"] = time.perf_counter() - start
        entry["end_to_end"] = end_to_end(client, bench_settings, name, gallery_m, q, truth,
                                         codebooks)  # fmt: skip
        res["galleries"][label] = entry
    res["load_end"] = load_avg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    lines = ["## Second stages on real encodings (demo checkpoint)", ""]
    for label, e in res["galleries"].items():
        lines += [f"### {label}: {e['gallery_rows']:,} items, {e['queries']:,} queries", "",
                  "| code | bytes/item | candidates for 95% of the exact top-10 |",
                  "|---|---:|---:|"]  # fmt: skip
        for code, v in e["needed_for_95pct"].items():
            lines.append(f"| {code} | {v['bytes']} | {v['needed']:,} |")
        lines += ["", "| product cascade | recall@10 | p50 ms |", "|---|---:|---:|"]
        for cascade, v in e["end_to_end"].items():
            if isinstance(v, dict):
                lines.append(f"| {cascade} | {v['recall@10']:.3f} | {v['p50_ms']:.2f} |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
