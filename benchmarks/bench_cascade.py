"""The product's search paths beside plain ANN libraries, at several gallery sizes, in one run.

    python -m benchmarks.bench_cascade --sizes 100000,300000,1000000 --out benchmarks/results/scale

For each size, a synthetic gallery (benchmarks/synthetic.py) goes into the benchmark's own
embedded Milvus through the product's loader (`write_gallery`) and its local tier is built from
Milvus (`meet_milvus.tier`), exactly as `meet-milvus load` does. Then, side by side on the same
queries:

- exact brute force (torch, float32 in RAM): the truth's own method and the speed floor;
- hnswlib HNSW and faiss IVF-RaBitQ + exact refine with the vectors in RAM (library baselines);
- the product, client-side: the ANN index of the local tier (IVF over RaBitQ codes of a
  PCA-256 projection) -> exact rescoring of the survivors read from disk; and MEET's learned
  codes (Hamming -> PQ-ADC) -> the same exact rescoring;
- the product, server-side: Hamming in Milvus (BIN_IVF_FLAT) -> ADC -> exact in Milvus.

Per method: p50/p95 latency of one query per call (1 and 2 threads for the product's default),
batch QPS, recall@10 against the exact top-10, and the TOTAL resident bytes per item it needs:
client RSS growth (a fresh process opens the method and runs queries: `benchmarks.rss_probe`)
plus the Milvus server's RSS growth for the collections the method needs loaded. Cold latency:
the tier's files evicted from the page cache before every query.

Writes OUT.json (every figure) and OUT.md (the tables). Nothing here is a test: it needs the
`bench` extra (hnswlib, matplotlib) and, at 1M items, about 40 minutes and 12 GB of RAM.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import faiss
import hnswlib
import numpy as np

from benchmarks import peers
from benchmarks.measure import (
    batched,
    kept,
    load_avg,
    per_query,
    probe_rss,
    recall_at_k,
    settle_rss,
    threads,
)
from benchmarks.synthetic import SyntheticGallery, SyntheticSpec, exact_topk, generate
from meet_milvus import gallery_layout as cols
from meet_milvus.cascade import (
    AnnFilter,
    Cascade,
    ExactRescore,
    HammingFilter,
    MilvusAnn,
    QuantizedFilter,
)
from meet_milvus.config import Settings
from meet_milvus.errors import MeetError
from meet_milvus.gallery_rows import Items, Origin, write_gallery
from meet_milvus.model.meet_model import Encoded
from meet_milvus.pool import neighbour_stats
from meet_milvus.reader import MilvusReader, MilvusSide, open_tier
from meet_milvus.server import EmbeddedServer, connect
from meet_milvus.tier import LocalTier
from meet_milvus_loaders.milvus_loader import build_tiers

K = 10


@dataclass(frozen=True)
class Run:
    """What one benchmark run measures (the command's options)."""

    sizes: tuple[int, ...]
    queries: int
    eval_queries: int
    latency_queries: int
    cold_queries: int
    batch: int
    ann_nprobe: tuple[float, ...]  # fractions of the IVF lists
    ann_keep: int
    ann_keep_also: tuple[int, ...]  # other survivor counts, at the middle nprobe
    meet_settings: tuple[tuple[float, float], ...]  # (R, Q) as fractions of the gallery
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef: tuple[int, ...]
    server_side: bool
    server_ef: tuple[int, ...] = (100, 300)  # the server-side HNSW's candidate lists
    client_side: bool = True  # the libraries, the product's local tier and the peers
    server_mmap: bool = False  # the embedded server maps loaded segments (embedded_mmap)
    peers: tuple[str, ...] = ()  # of PEERS
    diskann_r: int = 64  # graph degree
    diskann_build_l: int = 100  # candidate list while building
    diskann_pq: int = 64  # bytes of PQ code per item in RAM
    diskann_l: tuple[int, ...] = (50, 100)  # candidate list while searching
    diskann_w: int = 4  # beam width: sector reads issued together
    pq_m: int = 64  # bytes of PQ code per item (faiss IVF-PQ, LanceDB IVF_PQ)
    ivfpq_nprobe: float = 0.03  # faiss IVF-PQ: fraction of the lists scanned
    lance_nprobe: float = 0.10  # LanceDB: fraction of the partitions scanned
    lance_refine: int = 30  # LanceDB: refine_factor (exact rescoring of refine × k)


PEERS = ("diskann", "faiss-ivfpq", "lance")


# -- the gallery in Milvus and its tier ---------------------------------------------------------


def milvus(data_dir: Path, port: int, mmap: bool = False
           ) -> tuple[object, EmbeddedServer, Settings]:  # fmt: skip
    settings = Settings(data_dir=data_dir, embedded_port=port, cache_dir=data_dir / "cache",
                        embedded_mmap=mmap)  # fmt: skip
    server = EmbeddedServer(settings)
    return connect(settings), server, settings


def restart(server: EmbeddedServer, settings: Settings):
    """A fresh server process (nothing loaded): Milvus frees memory lazily after a release."""
    server.stop()
    for _ in range(30):  # the old server's ports may linger for a few seconds
        try:
            return connect(settings)
        except MeetError as e:
            if "already in use" not in str(e):
                raise
            time.sleep(2)
    raise MeetError("benchmark: the embedded Milvus did not restart")


def wait_indexed(client, names: list[str], poll: float = 2.0) -> float:
    """Block until Milvus has built the vector indexes of `names` (it builds them in the
    background after a load, and would compete with every timing); the seconds waited."""
    start = time.perf_counter()
    for name in names:
        for index in client.list_indexes(name):
            while True:
                info = client.describe_index(name, index)
                # Milvus 2.3 never indexes a segment under 1024 rows (it scans those).
                left = info.get("total_rows", 0) - info.get("indexed_rows", 0)
                if info.get("pending_index_rows", 0) < 1024 and left < 1024:
                    break
                time.sleep(poll)
    return time.perf_counter() - start


def load_synthetic(client, settings: Settings, name: str, g: SyntheticGallery) -> float:
    """The gallery into Milvus through the product's loader (images = gallery items, texts = the
    queries); a complete earlier load is kept. Returns the seconds it took."""
    start = time.perf_counter()
    dense = _Float32Rows(g.dense)
    images = Encoded(dense, g.head, g.hash_codes, g.pq_codes)
    texts = Encoded(g.q_dense, g.q_head, g.q_hash_codes, g.encode_pq(g.q_head))
    n, q = g.n_items, len(g.q_dense)
    layout = cols.find_layout(client, name)
    done = layout is not None and all(
        client.get_collection_stats(c).get("row_count") == (n if "_image" in c else q)
        for m in cols.MODALITIES for c in layout.collections(name, m)
    )  # fmt: skip
    if done:
        return 0.0
    items = {
        "image": Items(
            encoded=images,
            source=[f"synthetic item {i}" for i in range(n)],
            external_id=[str(i) for i in range(n)],
            image=np.arange(n, dtype=np.int64),
            neighbours=neighbour_stats(dense, g.q_dense, K),
        ),
        "text": Items(
            encoded=texts,
            source=[f"synthetic query {i}" for i in range(q)],
            external_id=[f"q{i}" for i in range(q)],
            image=g.q_source,
            neighbours=neighbour_stats(g.q_dense, dense, K),
        ),
    }
    s = g.spec
    origin = Origin(f"synthetic-{s.key()}", s.bits, s.pq_m, s.pq_nbits, f"synthetic/{s.n_items}")
    write_gallery(client, name, items, origin, progress=True)
    build_tiers(client, name, settings, click.echo, items)  # as `meet-milvus load` does
    return time.perf_counter() - start


class _Float32Rows:
    """float16 rows read as float32, one slice at a time (Milvus takes float32 vectors)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.array[index], dtype=np.float32)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self.array, dtype=dtype)


# -- methods -------------------------------------------------------------------------------------


def encoded_queries(g: SyntheticGallery) -> Encoded:
    return Encoded(g.q_dense, g.q_head, g.q_hash_codes, g.encode_pq(g.q_head))


def ann_cascade(client, gallery, tier: LocalTier, nprobe: float, keep: int) -> Cascade:
    return Cascade([AnnFilter(tier, keep=keep, nprobe=nprobe), ExactRescore(tier, keep=K)])


def meet_cascade(client, gallery, tier: LocalTier | None, g: SyntheticGallery, r: int, q: int):
    """MEET's cascade on the local tier, or (tier None) on Milvus: its BIN_IVF_FLAT search and
    the codes and vectors read from the collections."""
    mode = "client" if tier is not None else "milvus"
    store = tier if tier is not None else MilvusReader(MilvusSide(client, gallery, "image"))
    return Cascade(
        [
            HammingFilter(store, keep=r, mode=mode, milvus=MilvusSide(client, gallery, "image")),
            QuantizedFilter(store, g.codebooks, keep=q, mode="adc"),
            ExactRescore(store, keep=K),
        ]
    )


def measure_cascade(cascade: Cascade, queries: Encoded, truth: np.ndarray, run: Run) -> dict:
    """Latency one query per call (with the per-stage p50), batch QPS, recall, stage keep."""
    stage_lat: dict[str, list[float]] = {}

    def one(rows: np.ndarray) -> None:
        for t in cascade.trace(queries[rows]):
            stage_lat.setdefault(t.name, []).append(t.seconds)

    out = per_query(one, run.latency_queries)
    out["stage_p50_ms"] = {k: 1e3 * float(np.median(v[1:])) for k, v in stage_lat.items()}
    found: dict[str, list[np.ndarray]] = {}
    start = time.perf_counter()
    for lo in range(0, run.eval_queries, run.batch):
        for t in cascade.trace(queries[lo : min(run.eval_queries, lo + run.batch)]):
            found.setdefault(t.name, []).append(t.candidates.ids)
    seconds = time.perf_counter() - start
    out.update(qps=run.eval_queries / seconds, batch=run.batch)
    final = np.concatenate(found[cascade.stages[-1].name])
    top = truth[: run.eval_queries]
    out["recall@10"] = recall_at_k(final, top)
    out["kept"] = {n: kept(np.concatenate(ids), top) for n, ids in found.items()}
    return out


def measure_fn(search, truth: np.ndarray, run: Run) -> dict:
    out = per_query(search, run.latency_queries)
    ids, qps = batched(search, run.eval_queries, run.batch)
    out.update(qps)
    out["recall@10"] = recall_at_k(ids, truth[: run.eval_queries])
    return out


def measure_exact(g: SyntheticGallery, run: Run) -> dict:
    """Brute force over a float32 copy of the gallery in this process (torch matmul)."""
    gallery = np.asarray(g.dense, np.float32)
    res = measure_fn(lambda rows: exact_topk(g.q_dense[rows], gallery, K)[0], g.truth_ids, run)
    return res | {"client_B": gallery.nbytes / len(gallery), "server_B": 0.0}


def measure_faiss_refine(path: Path, nprobe: int, g: SyntheticGallery, run: Run) -> dict:
    index = faiss.read_index(str(path))
    params = faiss.IndexRefineSearchParameters(
        k_factor=run.ann_keep / K,
        base_index_params=faiss.SearchParametersPreTransform(
            index_params=faiss.IVFSearchParameters(nprobe=nprobe)
        ),
    )
    return measure_fn(lambda rows: index.search(g.q_dense[rows], K, params=params)[1],
                      g.truth_ids, run)  # fmt: skip


def cold(cascade: Cascade, tier: LocalTier, queries: Encoded, n: int) -> dict:
    """Latency with the tier's on-disk files evicted from the page cache before every query."""
    lat = []
    for i in range(n):
        tier.drop_page_cache()
        start = time.perf_counter()
        cascade(queries[i : i + 1])
        lat.append(time.perf_counter() - start)
    return latency_stats(lat)


def hnsw_index(g: SyntheticGallery, run: Run, cache: Path) -> tuple[Path, float]:
    """hnswlib over the gallery (inner product), built once and kept in the cache."""
    tag = f"{g.spec.key()}-{g.n_items}-M{run.hnsw_m}-ef{run.hnsw_ef_construction}"
    path = cache / f"hnsw-{tag}.bin"
    if path.is_file():
        return path, json.loads(path.with_suffix(".json").read_text())["build_s"]
    start = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=g.spec.dim)
    index.init_index(g.n_items, M=run.hnsw_m, ef_construction=run.hnsw_ef_construction)
    for lo in range(0, g.n_items, 65536):
        block = np.asarray(g.dense[lo : lo + 65536], np.float32)
        index.add_items(block, np.arange(lo, lo + len(block)), num_threads=2)
    build = time.perf_counter() - start
    index.save_index(str(path))
    path.with_suffix(".json").write_text(json.dumps({"build_s": build}))
    return path, build


def faiss_refine_index(tier: LocalTier, path: Path) -> tuple[Path, float]:
    """The tier's own ANN index with faiss's exact refine over float32 vectors in RAM."""
    start = time.perf_counter()
    base = faiss.read_index(str(tier.path / tier.info["ann"]["file"]))
    flat = faiss.IndexFlatL2(base.d)
    for _, dense in tier.dense_range(0, tier.rows):
        for lo in range(0, len(dense), 65536):
            flat.add(np.ascontiguousarray(dense[lo : lo + 65536]))
    faiss.write_index(faiss.IndexRefine(base, flat), str(path))
    return path, time.perf_counter() - start


# -- one gallery size -------------------------------------------------------------------------


@dataclass
class Size:
    """One gallery size's shared state while its methods are measured."""

    n: int
    run: Run
    g: SyntheticGallery
    queries: Encoded
    client: object
    gallery: object
    tier: LocalTier
    cache: Path
    work: Path
    qfile: Path
    books: Path

    @property
    def truth(self) -> np.ndarray:
        return self.g.truth_ids


def prepare(n: int, run: Run, data_dir: Path, port: int, cache: Path, work: Path):
    """The gallery in Milvus, its local tier, the queries on disk for the RSS probes; a fresh
    server with nothing loaded. Returns (Size, the size's record, server, settings)."""
    g = generate(SyntheticSpec(n_items=n, n_queries=run.queries), cache)
    name = f"syn_{n // 1000}k"
    client, server, settings = milvus(data_dir, port, run.server_mmap)
    out: dict = {"items": n, "queries": run.queries, "spec": asdict(g.spec)}
    out["load_s"] = load_synthetic(client, settings, name, g)
    gallery = cols.open_gallery(client, name, mapped=settings.maps_segments)
    out["index_wait_s"] = wait_indexed(client, gallery.collections())
    start = time.perf_counter()
    tier = open_tier(client, gallery, "image", settings, echo=click.echo)
    out["tier"] = dict(tier.info, open_or_build_s=time.perf_counter() - start)
    gallery.release(client)
    qfile = work / f"queries-{n}.npz"
    np.savez(qfile, dense=g.q_dense[: run.eval_queries], head=g.q_head[: run.eval_queries],
             hash=g.q_hash_codes[: run.eval_queries])  # fmt: skip
    books = work / f"codebooks-{n}.npy"
    np.save(books, g.codebooks)
    # Server state while the client-side methods run: none of the gallery's collections loaded.
    client = restart(server, settings)
    size = Size(n, run, g, encoded_queries(g), client, gallery, tier, cache, work, qfile, books)
    return size, out, server, settings


def bench_libraries(s: Size) -> dict[str, dict]:
    """Exact search, hnswlib and faiss IVF-RaBitQ + refine, all in RAM."""
    g, run, n = s.g, s.run, s.n
    methods = {"exact (torch, RAM)": measure_exact(g, run)}
    path, build = hnsw_index(g, run, s.cache)
    for ef in run.hnsw_ef:
        index = hnswlib.Index(space="ip", dim=g.spec.dim)
        index.load_index(str(path))
        index.set_ef(ef)
        index.set_num_threads(2)
        res = measure_fn(lambda rows, ix=index: ix.knn_query(g.q_dense[rows], k=K)[0], s.truth,
                         run)  # fmt: skip
        mem = probe_rss({"method": "hnswlib", "index": str(path), "dim": g.spec.dim, "ef": ef,
                         "k": K, "queries": str(s.qfile)})  # fmt: skip
        methods[f"hnswlib M={run.hnsw_m} ef={ef} (RAM)"] = res | client_bytes(mem, n) | {
            "server_B": 0.0, "build_s": build}
        del index
    nlist = s.tier.info["ann"]["nlist"]
    fpath, fbuild = faiss_refine_index(s.tier, s.work / f"refine-{n}.faiss")
    nprobe = max(1, round(default_probe(run) * nlist))
    res = measure_faiss_refine(fpath, nprobe, g, run)
    mem = probe_rss({"method": "faiss", "index": str(fpath), "k": K, "queries": str(s.qfile)})
    label = f"faiss IVF{nlist}-RaBitQ nprobe={nprobe} + refine {run.ann_keep} (RAM)"
    methods[label] = res | client_bytes(mem, n) | {"server_B": 0.0, "build_s": fbuild}
    fpath.unlink()
    return methods


def default_probe(run: Run) -> float:
    """The product's default setting: the middle of --ann-nprobe (threads measured there)."""
    return run.ann_nprobe[len(run.ann_nprobe) // 2]


def product_cascades(s: Size) -> list[tuple[str, Cascade, dict]]:
    """The product's client-side paths: (label, cascade, the RSS probe's spec)."""
    run, n, nlist = s.run, s.n, s.tier.info["ann"]["nlist"]
    out = []
    for frac in run.ann_nprobe:
        label = f"product: ANN nprobe={max(1, round(frac * nlist))}/{nlist} -> exact (disk)"
        probe = {"method": "ann", "tier": str(s.tier.path), "nprobe": frac,
                 "keep": run.ann_keep, "k": K, "queries": str(s.qfile)}  # fmt: skip
        out.append((label, ann_cascade(s.client, s.gallery, s.tier, frac, run.ann_keep), probe))
    for keep in run.ann_keep_also:  # fewer survivors: fewer reads from disk, cold above all
        frac = default_probe(run)
        label = (f"product: ANN nprobe={max(1, round(frac * nlist))}/{nlist}, {keep} survivors "
                 "-> exact (disk)")  # fmt: skip
        probe = {"method": "ann", "tier": str(s.tier.path), "nprobe": frac, "keep": keep,
                 "k": K, "queries": str(s.qfile), "extra": True}  # fmt: skip
        out.append((label, ann_cascade(s.client, s.gallery, s.tier, frac, keep), probe))
    for r_frac, q_frac in run.meet_settings:
        r, q = max(K, round(r_frac * n)), max(K, round(q_frac * n))
        label = f"product: MEET Hamming R={r} -> PQ Q={q} -> exact (disk)"
        probe = {"method": "meet", "tier": str(s.tier.path), "R": r, "Q": q, "k": K,
                 "codebooks": str(s.books), "queries": str(s.qfile)}  # fmt: skip
        out.append((label, meet_cascade(s.client, s.gallery, s.tier, s.g, r, q), probe))
    return out


def bench_product(s: Size) -> dict[str, dict]:
    """The product, client-side (ANN or MEET's codes -> exact rescoring read from disk), warm;
    then each cold, last: evicting the tier's files would slow whatever ran after."""
    methods, cascades = {}, product_cascades(s)
    disk_b = tier_disk_bytes(s.tier) / s.n
    for label, cascade, probe in cascades:
        res = measure_cascade(cascade, s.queries, s.truth, s.run)
        mem = probe_rss(probe)
        methods[label] = res | client_bytes(mem, s.n) | {"disk_B": disk_b,
                                                          "product": probe["method"]}  # fmt: skip
        if probe.get("nprobe") == default_probe(s.run) and not probe.get("extra"):
            methods[label]["nprobe_fraction"] = probe["nprobe"]
            methods[label]["threads"] = {}
            for t in (1, 2):
                with threads(t):
                    methods[label]["threads"][str(t)] = measure_cascade(
                        cascade, s.queries, s.truth, s.run
                    )
    for label, cascade, _ in cascades:
        methods[label]["cold"] = cold(cascade, s.tier, s.queries, s.run.cold_queries)
    return methods


def tier_disk_bytes(tier: LocalTier) -> int:
    """Every file of the local tier on disk (vectors, codes, ANN index, sources)."""
    return sum(p.stat().st_size for p in Path(tier.path).rglob("*") if p.is_file())


def make_peers(s: Size) -> list[peers.Peer]:
    """The peers of the run's --peers, each index built (once) under the cache."""
    run, n = s.run, s.n
    root = s.cache / f"peers-{n}-{s.g.spec.key()}"
    nlist = s.tier.info["ann"]["nlist"]  # the product's IVF size: same nprobe fractions
    out: list[peers.Peer] = []
    if "diskann" in run.peers:
        r, build_l, pq = run.diskann_r, run.diskann_build_l, run.diskann_pq
        tag = f"diskann-R{r}-L{build_l}-PQ{pq}"
        out += [peers.DiskAnn(root / tag, r, build_l, pq, search_l, run.diskann_w)
                for search_l in run.diskann_l]  # fmt: skip
    if "faiss-ivfpq" in run.peers:
        nprobe = max(1, round(run.ivfpq_nprobe * nlist))
        out.append(peers.FaissIvfPq(root / f"faiss-IVF{nlist}-PQ{run.pq_m}", nlist, run.pq_m,
                                    nprobe, run.ann_keep))  # fmt: skip
    if "lance" in run.peers:
        parts = max(1, round(np.sqrt(n)))  # Lance's rule of thumb: sqrt(n) partitions
        nprobes = max(1, round(run.lance_nprobe * parts))
        out.append(peers.LanceIvfPq(root / f"lance-IVF{parts}-PQ{run.pq_m}", parts, run.pq_m,
                                    nprobes, run.lance_refine))  # fmt: skip
    return out


def bench_peer(peer: peers.Peer, s: Size) -> dict:
    """One peer: RSS (a fresh process), warm latency, batch QPS and recall, the share of its
    files the page cache holds after the warm runs, then cold latency."""
    click.echo(f"   {peer.label}")
    built = peer.ensure_built(s.g.dense)
    files = peer.files()
    peers.evict(files, sync=True)  # what the warm runs bring into the page cache: see below
    mem = peer.resident_bytes(s.qfile)
    peer.open()
    try:
        q = s.g.q_dense
        out = latency_stats(peer.latencies(q[: s.run.latency_queries], K, cold=False))
        ids, qps = batched(lambda rows: peer.search(q[rows], K), s.run.eval_queries, s.run.batch)
        out |= qps | {"recall@10": recall_at_k(ids, s.truth[: s.run.eval_queries])}
        # bytes in the page cache and file size, per file
        cached = {f.name: [peers.cached_bytes([f]), f.stat().st_size] for f in files}
        out["page_cache_after_warm"] = cached
        out["page_cache_after_warm_B"] = sum(b for b, _ in cached.values()) / s.n
        out["cold"] = latency_stats(peer.latencies(q[: s.run.cold_queries], K, cold=True))
    finally:
        peer.close()
    out |= client_bytes(mem, s.n) | {"disk_B": peers.disk_bytes(files) / s.n, "server_B": 0.0,
            "build_s": built["build_s"], "files": [f.name for f in files], "peer": peer.tag,
            "timed": "in process"}  # fmt: skip
    if isinstance(peer, peers.DiskAnn):
        out |= {"timed": "inside the worker", "pq_bytes_in_ram": peer.pq_bytes()}
    return out


def client_bytes(mem: dict, n: int) -> dict:
    """A method's client memory per item from its RSS probe: the RSS growth less its
    file-backed part (mapped page cache, e.g. a memmap, which the product's pread reads never
    count either), and that part apart."""
    file = mem.get("file_bytes", 0)
    return {"client_B": (mem["rss_bytes"] - file) / n, "mapped_file_B": file / n}


def latency_stats(seconds: list[float]) -> dict:
    lat = np.asarray(seconds)
    return {"p50_ms": 1e3 * float(np.percentile(lat, 50)),
            "p95_ms": 1e3 * float(np.percentile(lat, 95)),
            "mean_ms": 1e3 * float(np.mean(lat)), "latency_queries": len(lat)}  # fmt: skip


def server_bytes(s: Size, pid: int, names: list[str]) -> tuple[float, float]:
    """Load `names` into Milvus; the server's growth per item: anonymous memory, and the file
    pages it maps (page cache) apart."""
    anon, rss = settle_rss(pid, 2.0, "RssAnon"), settle_rss(pid, 0.0)
    for name in names:
        s.gallery.ensure_loaded(s.client, name)
    anon_b = (settle_rss(pid, 4.0, "RssAnon") - anon) / s.n
    return anon_b, (settle_rss(pid, 0.0) - rss) / s.n - anon_b


def mapped(s: Size) -> str:
    """A server-side row's label suffix: the server maps its segments (embedded_mmap)."""
    return ", mmap" if s.run.server_mmap else ""


def bench_server_side(s: Size, pid: int) -> dict[str, dict]:
    """The product, server-side: the codes and vectors inside Milvus."""
    need = [s.gallery.collection("image", f) for f in ("hash", "dense")]
    server_b, file_b = server_bytes(s, pid, need)
    r, q = min(16384, s.n // 8), min(4096, s.n // 32)
    cascade = meet_cascade(s.client, s.gallery, None, s.g, r, q)
    res = measure_cascade(cascade, s.queries, s.truth, s.run)
    codes_b = s.g.pq_codes.nbytes / s.n  # the ADC stage's client-side codes, exact size
    s.gallery.release(s.client)
    return {f"server-side: Milvus Hamming R={r} -> PQ Q={q} -> exact in Milvus{mapped(s)}": res | {
        "client_B": codes_b, "server_B": server_b, "server_page_cache_B": file_b,
        "product": "server"}}


def bench_server_ann(s: Size, pid: int) -> dict[str, dict]:
    """The product's server-side ANN: Milvus's HNSW on the dense field, exact scores from the
    index, nothing on the client. A gallery made before HNSW gets it first (timed)."""
    out: dict[str, dict] = {}
    build = 0.0
    if s.gallery.dense_index(s.client, "image") != "HNSW":
        start = time.perf_counter()
        cols.rebuild_dense_index(s.client, s.gallery, "HNSW")
        build = time.perf_counter() - start
    anon_b, file_b = server_bytes(s, pid, [s.gallery.collection("image", "dense")])
    side = MilvusSide(s.client, s.gallery, "image")
    store = MilvusReader(side)
    for ef in s.run.server_ef:
        cascade = Cascade([MilvusAnn(store, keep=K, ef=ef, milvus=side)])
        res = measure_cascade(cascade, s.queries, s.truth, s.run)
        out[f"server-side: Milvus HNSW ef={ef}{mapped(s)}"] = res | {
            "client_B": 0.0, "server_B": anon_b, "server_page_cache_B": file_b,
            "hnsw_build_s": build, "product": "server"}  # fmt: skip
    s.gallery.release(s.client)
    return out


def bench_size(n: int, run: Run, data_dir: Path, port: int, cache: Path, work: Path) -> dict:
    s, out, server, _ = prepare(n, run, data_dir, port, cache, work)
    pid = server.status().pid
    server_idle = settle_rss(pid, 10.0)
    methods = (bench_libraries(s) | bench_product(s)) if run.client_side else {}
    for peer in make_peers(s) if run.client_side else ():
        methods[peer.label] = bench_peer(peer, s)
    # The client-side methods loaded nothing into Milvus: its growth meanwhile is their share.
    growth = (settle_rss(pid, 2.0) - server_idle) / n
    out["server_growth_during_client_methods_B"] = growth
    for r in methods.values():
        r.setdefault("server_B", max(0.0, growth))
    if run.server_side:
        methods |= bench_server_side(s, pid)
        methods |= bench_server_ann(s, pid)
    for r in methods.values():
        r["total_B"] = r["client_B"] + r["server_B"]
    out["methods"] = methods
    out["server_idle_mb"] = server_idle / 2**20
    out["load_avg"] = load_avg()
    return out


# -- report ---------------------------------------------------------------------------------------


def markdown(res: dict) -> str:
    lines = [
        "## Search paths at scale (synthetic galleries)",
        "",
        f"Machine: {res['machine']}. Load average at start {res['load_start']}, at end "
        f"{res['load_end']}. Latency: one query per call (p50/p95 over "
        f"{res['run']['latency_queries']} queries, 2 threads unless stated); recall@10 against "
        f"the exact top-10 and QPS over {res['run']['eval_queries']} queries in calls of "
        f"{res['run']['batch']}. Memory: total resident bytes per item = client RSS growth "
        "(a fresh process opens the method and runs queries; file pages it maps, page cache, "
        "left out and kept in the JSON as mapped_file_B) + the Milvus server's RSS growth "
        "for the collections the method needs loaded. Cold: the method's own files evicted from "
        f"the page cache (posix_fadvise DONTNEED) before each of {res['run']['cold_queries']} "
        "queries; – for methods that keep everything in RAM. Disk: every file the method keeps "
        "on disk, per item.",
    ]
    for size in res["sizes"]:
        lines += ["", f"### {size['items']:,} items", "", *size_table(size), *size_notes(size)]
    return "\n".join(lines) + "\n"


def size_table(size: dict) -> list[str]:
    # --no-client-side runs no exact row: the ratio column is then empty.
    exact = next((v for k, v in size["methods"].items() if k.startswith("exact")), None)
    lines = [
        "| method | p50 ms | p95 ms | p50 cold | p95 cold | QPS (batch) | × exact QPS | "
        "total B/item | client B/item | server B/item | disk B/item | recall@10 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in size["methods"].items():
        cold = r.get("cold")
        p50c, p95c = (f"{cold['p50_ms']:.2f}", f"{cold['p95_ms']:.2f}") if cold else ("–", "–")
        disk = f"{r['disk_B']:,.0f}" if "disk_B" in r else "–"
        ratio = f"{r['qps'] / exact['qps']:.1f}" if exact else "–"
        lines.append(
            f"| {label} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {p50c} | {p95c} | "
            f"{r['qps']:.0f} | {ratio} | {r['total_B']:.1f} | "
            f"{r['client_B']:.1f} | {r['server_B']:.1f} | {disk} | {r['recall@10']:.3f} |"
        )
    return lines


def size_notes(size: dict) -> list[str]:
    lines = ["", "Per stage (p50 ms of one query; share of the exact top-10 kept):", ""]
    for label, r in size["methods"].items():
        if "stage_p50_ms" in r:
            cells = ", ".join(f"{s} {r['stage_p50_ms'][s]:.2f} ms / {r['kept'][s]:.3f}"
                              for s in r["stage_p50_ms"])  # fmt: skip
            lines.append(f"- {label}: {cells}")
    for label, r in size["methods"].items():
        if "threads" in r:
            t1, t2 = r["threads"]["1"], r["threads"]["2"]
            lines += ["", f"Threads ({label}): 1 thread p50 {t1['p50_ms']:.2f} ms, "
                      f"{t1['qps']:.0f} QPS; 2 threads p50 {t2['p50_ms']:.2f} ms, "
                      f"{t2['qps']:.0f} QPS."]  # fmt: skip
    mapped = {k: r for k, r in size["methods"].items() if "server_page_cache_B" in r}
    if mapped:
        lines += ["", "Server-side rows: server B/item is Milvus's anonymous memory (RssAnon); "
                  "file pages it maps come on top, as page cache the kernel can reclaim:", ""]
    for label, r in mapped.items():
        build = f", HNSW built in {r['hnsw_build_s']:.0f} s" if r.get("hnsw_build_s") else ""
        lines.append(f"- {label}: {r['server_page_cache_B']:,.0f} B/item mapped{build}")
    peer_rows = {k: r for k, r in size["methods"].items() if "peer" in r}
    if peer_rows:
        lines += ["", "Peers (index build once, kept in the cache; page cache after the warm "
                  "runs, per item, from mincore on the method's files):", ""]  # fmt: skip
    for label, r in peer_rows.items():
        extra = f", PQ {r['pq_bytes_in_ram']:.0f} B/item in RAM" if "pq_bytes_in_ram" in r else ""
        cached = r["page_cache_after_warm_B"]
        files = r.get("page_cache_after_warm", {})  # name: [bytes cached, file size]
        n = size["items"]
        big = ", ".join(f"{name} {nbytes / n:,.0f}" for name, (_, nbytes) in files.items()
                        if nbytes >= 0.01 * r["disk_B"] * n)  # fmt: skip
        lines.append(f"- {label}: build {r['build_s']:.0f} s, latency timed {r['timed']}, page "
                     f"cache after warm runs {cached:,.0f} B/item{extra}; disk B/item by file: "
                     f"{big}")  # fmt: skip
    diskann = [r for r in peer_rows.values() if r["peer"].startswith("diskann")]
    if diskann:
        lines += ["", "DiskANN runs in a worker process under its own venv (diskannpy pins numpy "
                  "1.25); its single-query latency is timed inside the worker around diskannpy's "
                  "search alone, its batch QPS around the call over the pipe."]  # fmt: skip
        graph = [r["page_cache_after_warm"].get("ann_disk.index", [0, 1]) for r in diskann]
        share = max(cached / size for cached, size in graph)
        lines[-1] += (f" Its warm runs left {100 * share:.1f}% of its graph-and-vectors file "
                      "(ann_disk.index) in the page cache (mincore), having read it all along: "
                      "it reads with O_DIRECT, past the page cache, so evicting changes nothing "
                      "there and its cold figures measure the same reads as its warm ones."
                      if share < 0.01 else
                      f" Its warm runs left {100 * share:.1f}% of ann_disk.index in the page "
                      "cache: its reads went through it.")  # fmt: skip
    t = size["tier"]
    lines += ["", f"Load through the product's loader {size['load_s']:.0f} s (0: an earlier "
              f"run's); local tier + ANN index (PCA{t['ann']['pca']}, IVF{t['ann']['nlist']}, "
              f"RaBitQ) {t.get('build_s', 0):.0f} s."]  # fmt: skip
    return lines


def plot(res: dict, path: Path) -> None:
    """recall@10 against p50 latency, one panel per gallery size, marker size ~ memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = res["sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.2), squeeze=False)
    families = {"exact": "black", "hnswlib": "tab:blue", "faiss": "tab:purple",
                "product: ANN": "tab:green", "product: MEET": "tab:orange",
                "server-side": "tab:red"}  # fmt: skip
    for ax, size in zip(axes[0], sizes, strict=True):
        for family, color in families.items():
            pts = [(r["p50_ms"], r["recall@10"], r["total_B"])
                   for k, r in size["methods"].items() if k.startswith(family)]  # fmt: skip
            if pts:
                x, y, b = zip(*sorted(pts, key=lambda p: p[1]), strict=True)
                ax.plot(x, y, "-o", color=color, label=family, ms=4)
                ax.annotate(f"{b[-1]:.0f} B/item", (x[-1], y[-1]), fontsize=7, color=color,
                            xytext=(3, -9), textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("p50 ms per query (log)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(f"{size['items']:,} items")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- the command ----------------------------------------------------------------------------------


_FLAGS = ("no_server_side", "no_client_side", "server_mmap")  # shown only when set


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


@click.command()
@click.option("--sizes", default="100000,300000,1000000", show_default=True)
@click.option("--queries", default=1000, show_default=True, help="queries generated per size")
@click.option("--eval-queries", default=200, show_default=True)
@click.option("--latency-queries", default=100, show_default=True)
@click.option("--cold-queries", default=30, show_default=True)
@click.option("--batch", default=50, show_default=True, help="queries per call for QPS")
@click.option("--ann-nprobe", default="0.02,0.04,0.08", show_default=True,
              help="IVF lists scanned, as fractions; the middle one also runs 1/2 threads, cold")
@click.option("--ann-keep", default=300, show_default=True, help="candidates rescored exactly")
@click.option("--ann-keep-also", default="", show_default=True,
              help="other survivor counts to run at the middle nprobe (e.g. 100,150)")
@click.option("--meet", "meet_settings", default="0.125:0.008,0.0625:0.004", show_default=True,
              help="MEET cascades R:Q as fractions of the gallery")
@click.option("--hnsw-m", default=16, show_default=True)
@click.option("--hnsw-ef-construction", default=100, show_default=True)
@click.option("--hnsw-ef", default="64,128", show_default=True)
@click.option("--no-server-side", is_flag=True, help="skip the server-side modes")
@click.option("--no-client-side", is_flag=True,
              help="skip the libraries, the product's local tier and the peers")
@click.option("--server-mmap", is_flag=True,
              help="the embedded server maps loaded segments (embedded_mmap; a data dir of its "
                   "own: a gallery loaded before format 3 cannot be mapped)")
@click.option("--server-ef", default="100,300", show_default=True,
              help="ef of the server-side HNSW (the dense field in Milvus)")
@click.option("--peers", default=",".join(PEERS), show_default=True,
              help="peer libraries of the product's memory class (benchmarks/peers.py)")
@click.option("--diskann-r", default=64, show_default=True, help="DiskANN graph degree")
@click.option("--diskann-build-l", default=100, show_default=True, help="DiskANN build L")
@click.option("--diskann-pq", default=64, show_default=True, help="DiskANN PQ bytes in RAM")
@click.option("--diskann-l", default="50,100", show_default=True, help="DiskANN search L")
@click.option("--diskann-w", default=4, show_default=True, help="DiskANN beam width")
@click.option("--pq-m", default=64, show_default=True, help="PQ bytes (faiss, LanceDB)")
@click.option("--ivfpq-nprobe", default=0.03, show_default=True,
              help="faiss IVF-PQ lists scanned, fraction (refine: --ann-keep)")
@click.option("--lance-nprobe", default=0.10, show_default=True,
              help="LanceDB partitions scanned, fraction")
@click.option("--lance-refine", default=30, show_default=True, help="LanceDB refine_factor")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("/tmp/meet-bench"),
              show_default=True, help="the benchmark's own Milvus and tiers")
@click.option("--port", default=19571, show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path),
              default=Path.home() / ".meet-milvus" / "cache" / "bench", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="OUT.json, OUT.md")
@click.option("--render", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="lay out an earlier OUT.json again (OUT.md, OUT.png) instead of measuring")
def main(**o) -> None:  # fmt: skip
    """Measure the product's search paths beside exact search and ANN libraries."""
    if o["render"]:
        res = json.loads(o["render"].read_text())
        o["out"].with_suffix(".md").write_text(markdown(res))
        plot(res, o["out"].with_suffix(".png"))
        click.echo(markdown(res))
        return
    run = run_of(o)
    flag = {p.name: p.opts[0] for p in main.params}  # as typed: --meet, not --meet-settings
    o["cache_dir"].mkdir(parents=True, exist_ok=True)
    res: dict = {
        "command": "python -m benchmarks.bench_cascade " + " ".join(
            f"{flag[k]} {v}" for k, v in o.items() if k not in (*_FLAGS, "render"))
        + "".join(f" {flag[k]}" for k in _FLAGS if o[k]),
        "machine": f"{faiss.omp_get_max_threads()} CPU threads, {platform.machine()}",
        "run": asdict(run),
        "load_start": load_avg(),
        "sizes": [],
    }  # fmt: skip
    out = Path(o["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for n in run.sizes:
            click.echo(f"== {n:,} items")
            res["sizes"].append(bench_size(n, run, o["data_dir"], o["port"], o["cache_dir"],
                                           Path(work)))  # fmt: skip
            res["load_end"] = load_avg()
            out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
            out.with_suffix(".md").write_text(markdown(res))
            plot(res, out.with_suffix(".png"))
    EmbeddedServer(Settings(data_dir=o["data_dir"], embedded_port=o["port"])).stop()
    click.echo(markdown(res))


def run_of(o: dict) -> Run:
    """The command's options as a Run; an unknown peer is a one-line error."""
    chosen = tuple(p for p in o["peers"].split(",") if p)
    unknown = sorted(set(chosen) - set(PEERS))
    if unknown:
        raise click.BadParameter(f"unknown peer {', '.join(unknown)} (known: "
                                 f"{', '.join(PEERS)})", param_hint="--peers")  # fmt: skip
    return Run(
        sizes=tuple(int(x) for x in o["sizes"].split(",")),
        queries=o["queries"], eval_queries=o["eval_queries"],
        latency_queries=o["latency_queries"], cold_queries=o["cold_queries"], batch=o["batch"],
        ann_nprobe=_floats(o["ann_nprobe"]), ann_keep=o["ann_keep"],
        ann_keep_also=tuple(int(x) for x in o["ann_keep_also"].split(",") if x),
        meet_settings=tuple(tuple(float(v) for v in s.split(":"))
                            for s in o["meet_settings"].split(",") if s),
        hnsw_m=o["hnsw_m"], hnsw_ef_construction=o["hnsw_ef_construction"],
        hnsw_ef=tuple(int(x) for x in o["hnsw_ef"].split(",")),
        server_side=not o["no_server_side"], peers=chosen,
        client_side=not o["no_client_side"], server_mmap=o["server_mmap"],
        server_ef=tuple(int(x) for x in o["server_ef"].split(",")),
        diskann_r=o["diskann_r"], diskann_build_l=o["diskann_build_l"],
        diskann_pq=o["diskann_pq"], diskann_l=tuple(int(x) for x in o["diskann_l"].split(",")),
        diskann_w=o["diskann_w"], pq_m=o["pq_m"], ivfpq_nprobe=o["ivfpq_nprobe"],
        lance_nprobe=o["lance_nprobe"], lance_refine=o["lance_refine"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
