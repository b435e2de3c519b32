"""What one search method holds resident, measured in a fresh process.

    python -m benchmarks.rss_probe '{"method": "ann", "tier": "...", "queries": "q.npz", ...}'

Imports everything any method needs first, reads VmRSS, opens the method (index files, the
local tier's codes), runs the queries once, and prints {"rss_bytes": growth, "file_bytes":
growth of its file-backed part, ...} as JSON: the growth is what the method itself holds, not
the interpreter and its libraries. Reads from the tier's on-disk files go through pread into the
page cache, which is not part of the process; a memmap's pages are, as RssFile (file_bytes).
"""

from __future__ import annotations

import ctypes
import gc
import json
import sys

import faiss
import hnswlib
import numpy as np
import torch

from benchmarks import peers
from benchmarks.measure import rss_bytes
from meet_milvus.cascade import AnnFilter, Cascade, ExactRescore, HammingFilter, QuantizedFilter
from meet_milvus.model.meet_model import Encoded
from meet_milvus.tier import read_tier


def tier_cascade(spec: dict):
    tier = read_tier(spec["tier"])
    if spec["method"] == "ann":
        first = [AnnFilter(tier, keep=spec["keep"], nprobe=spec["nprobe"])]
    else:
        books = np.load(spec["codebooks"])
        first = [
            HammingFilter(tier, keep=spec["R"], mode="client"),
            QuantizedFilter(tier, books, keep=spec["Q"], mode="adc"),
        ]
    return Cascade([*first, ExactRescore(tier, keep=spec["k"])])


def resident() -> tuple[int, int]:
    """(RSS, its file-backed part) after returning freed heap to the OS: what is held, not what
    malloc keeps around."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_bytes(), rss_bytes(field="RssFile")


def warm_libraries(dim: int) -> None:
    """First calls allocate per-thread buffers (OpenBLAS, OpenMP, faiss, the tier's readers)
    once per process: make them before the baseline, so the growth is the method's own."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, dim), dtype=np.float32)
    index = faiss.index_factory(dim, "IVF16,RaBitQ", faiss.METRIC_L2)
    index.train(x)
    index.add(x)
    index.search(x[:64], 300)
    torch.topk(torch.from_numpy(x[:64]) @ torch.from_numpy(x).T, 10)
    np.argsort(x[:64] @ x.T, axis=1)
    small = hnswlib.Index(space="ip", dim=dim)
    small.init_index(256)
    small.add_items(x[:256])
    small.knn_query(x[:4], k=10)
    peers.warm_lance(dim)


def main(spec: dict) -> dict:
    q = np.load(spec["queries"])
    pq = np.zeros((len(q["dense"]), 1), np.uint8)
    queries = Encoded(q["dense"], q["head"], q["hash"], pq)
    warm_libraries(q["dense"].shape[1])
    base = resident()
    method = spec["method"]
    if method in ("ann", "meet"):
        cascade = tier_cascade(spec)
        for lo in range(0, len(q["dense"]), 50):
            cascade(queries[lo : lo + 50])
    elif method == "hnswlib":
        index = hnswlib.Index(space="ip", dim=int(spec["dim"]))
        index.load_index(spec["index"])
        index.set_ef(int(spec["ef"]))
        index.knn_query(q["dense"], k=spec["k"])
    elif method == "faiss":
        index = faiss.read_index(spec["index"])
        index.search(np.ascontiguousarray(q["dense"]), spec["k"])
    elif method == "peer":  # benchmarks.peers: a peer library of the product's memory class
        peer = peers.from_spec(spec["peer"])
        peer.open()
        for lo in range(0, len(q["dense"]), 50):
            peer.search(q["dense"][lo : lo + 50], spec.get("k", 10))
    elif method == "exact":
        gallery = np.load(spec["dense"], mmap_mode="r")
        full = torch.from_numpy(np.asarray(gallery, dtype=np.float32))
        torch.topk(torch.from_numpy(q["dense"]) @ full.T, spec["k"])
        del gallery
    else:
        raise SystemExit(f"unknown method {method}")
    rss, file = resident()
    return {"method": method, "rss_bytes": rss - base[0], "file_bytes": file - base[1]}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
