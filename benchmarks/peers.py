"""Peer libraries of the product's memory class for `benchmarks.bench_cascade`: a compressed
index in RAM, the full vectors on disk.

- `DiskAnn`: diskannpy's disk index (Vamana graph, PQ codes in RAM, full vectors beside the
  graph on disk, read with O_DIRECT), in a worker process under its own venv
  (`benchmarks.diskann_env`), since diskannpy pins numpy 1.25;
- `FaissIvfPq`: faiss IVF-PQ in RAM, its top candidates rescored exactly from a float32
  memmap of the gallery;
- `LanceIvfPq`: LanceDB's IVF_PQ with its own refine (exact distances of refine_factor × k
  candidates read from the table on disk).

Each peer: `build(gallery, workdir)` writes its files once (kept and reused under `workdir`),
`open()`, `search(queries, k)` -> (n, k) item ids, `files()` (what to evict for a cold run),
`latencies(queries, k, cold)` (seconds per single query), `resident_bytes(queries_file)` (RSS
growth of a fresh process that opens it and runs the queries, and its file-backed part, as
`benchmarks.rss_probe` measures the product), `close()`.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
import tempfile
import time
from pathlib import Path

import faiss
import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import IvfPq

from benchmarks import diskann_env
from benchmarks.measure import probe_rss

BLOCK = 65536


# -- files: size, eviction, page-cache residency -------------------------------------------------


def disk_bytes(paths: list[Path]) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def evict(paths: list[Path], sync: bool = False) -> None:
    """posix_fadvise(DONTNEED) on each file: its clean pages leave the page cache (dirty ones,
    just written by a build, stay unless `sync` writes them first). Nothing to do for reads
    made with O_DIRECT (DiskANN's), which never enter it."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            if sync:
                os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]  # fmt: skip
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def cached_bytes(paths: list[Path]) -> int:
    """Bytes of the files now in the page cache (mincore over a mapping that touches nothing)."""
    total, page = 0, mmap.PAGESIZE
    for path in paths:
        size = Path(path).stat().st_size
        if size == 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap {path}")
            vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
            try:
                if _libc.mincore(addr, size, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {path}")
            finally:
                _libc.munmap(addr, size)
            total += page * sum(b & 1 for b in vec)
        finally:
            os.close(fd)
    return total


def float32_blocks(gallery: np.ndarray):
    """(start, float32 block) over the (float16) gallery, BLOCK rows at a time."""
    for lo in range(0, len(gallery), BLOCK):
        yield lo, np.ascontiguousarray(gallery[lo : lo + BLOCK], dtype=np.float32)


# -- the common shape -----------------------------------------------------------------------------


class Peer:
    """A peer method: one index (built once in `workdir`) at one search setting."""

    tag = "peer"  # the build's name: settings that share an index share its tag

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)

    def ensure_built(self, gallery: np.ndarray) -> dict:
        """Build unless an earlier run's build is complete; {"build_s", "files"}."""
        marker = self.workdir / "built.json"
        if marker.is_file():
            return json.loads(marker.read_text())
        self.workdir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        files = self.build(gallery, self.workdir)
        done = {"build_s": time.perf_counter() - start, "files": [str(f) for f in files]}
        marker.write_text(json.dumps(done))  # last: marks a complete build
        return done

    def files(self) -> list[Path]:
        return [Path(f) for f in json.loads((self.workdir / "built.json").read_text())["files"]]

    def build(self, gallery: np.ndarray, workdir: Path) -> list[Path]:
        raise NotImplementedError

    def open(self) -> None:
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def spec(self) -> dict:
        """What `from_spec` needs to open the same peer in another process."""
        raise NotImplementedError

    def latencies(self, queries: np.ndarray, k: int, cold: bool) -> list[float]:
        """Seconds of each single-query search, after a warm-up query; with `cold`, the peer's
        files evicted from the page cache before each (outside the timing)."""
        self.search(queries[:1], k)
        out, files = [], self.files()
        for i in range(len(queries)):
            if cold:
                self.evict(files)
            start = time.perf_counter()
            self.search(queries[i : i + 1], k)
            out.append(time.perf_counter() - start)
        return out

    def evict(self, files: list[Path]) -> None:
        evict(files)

    def resident_bytes(self, queries_file: Path) -> dict:
        """{"rss_bytes", "file_bytes"}: growth of VmRSS and of its file-backed part (RssFile)."""
        return probe_rss({"method": "peer", "peer": self.spec(), "queries": str(queries_file)})


def warm_lance(dim: int) -> None:
    """LanceDB's runtime (threads, caches) starts on first use, once per process: start it on a
    throwaway table, so that a probe's baseline holds it and the growth is the index's own."""
    with tempfile.TemporaryDirectory() as tmp:
        x = np.random.default_rng(0).standard_normal((256, dim), dtype=np.float32)
        table = lancedb.connect(tmp).create_table("warm", [{"vector": v} for v in x])
        table.search(x[0]).limit(10).to_arrow()
        table.search(list(x[:4])).limit(10).to_arrow()


def from_spec(spec: dict) -> Peer:
    kinds = {"faiss-ivfpq": FaissIvfPq, "lance-ivfpq": LanceIvfPq}
    args = dict(spec)
    return kinds[args.pop("kind")](**args)


# -- faiss IVF-PQ + exact refine from a float32 memmap ----------------------------------------


class FaissIvfPq(Peer):
    def __init__(self, workdir: Path, nlist: int, m: int, nprobe: int, refine: int) -> None:
        super().__init__(workdir)
        self.nlist, self.m, self.nprobe, self.refine = nlist, m, nprobe, refine
        self.tag = f"faiss-IVF{nlist}-PQ{m}"
        self.index = self.vectors = None

    @property
    def label(self) -> str:
        return (f"faiss IVF{self.nlist}-PQ{self.m} nprobe={self.nprobe}/{self.nlist} + refine "
                f"{self.refine} (float32 memmap)")  # fmt: skip

    def build(self, gallery: np.ndarray, workdir: Path) -> list[Path]:
        n, d = gallery.shape
        vectors = np.lib.format.open_memmap(workdir / "vectors.f32.npy", "w+", np.float32, (n, d))
        for lo, block in float32_blocks(gallery):
            vectors[lo : lo + len(block)] = block
        vectors.flush()
        index = faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, self.nlist, self.m, 8)
        index.cp.niter = 10  # faiss's IVF default; 2 cores cannot afford more at 1M
        rows = np.random.default_rng(0).choice(n, min(n, 40 * self.nlist), replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(rows)]))
        for lo in range(0, n, BLOCK):
            index.add(np.ascontiguousarray(vectors[lo : lo + BLOCK]))
        faiss.write_index(index, str(workdir / "ivfpq.faiss"))
        return [workdir / "ivfpq.faiss", workdir / "vectors.f32.npy"]

    def open(self) -> None:
        self.index = faiss.read_index(str(self.workdir / "ivfpq.faiss"))
        self.index.nprobe = self.nprobe
        self.vectors = np.load(self.workdir / "vectors.f32.npy", mmap_mode="r")

    def evict(self, files: list[Path]) -> None:
        """DONTNEED leaves the pages a process maps in the page cache: unmap the vectors first,
        map them again after (lazily: no page is read until a search touches it)."""
        self.vectors = None
        evict(files)
        self.vectors = np.load(self.workdir / "vectors.f32.npy", mmap_mode="r")

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        _, cand = self.index.search(np.ascontiguousarray(queries, np.float32), self.refine)
        out = np.full((len(queries), k), -1, np.int64)
        for i, (q, ids) in enumerate(zip(queries, cand, strict=True)):
            ids = np.sort(ids[ids >= 0])  # in file order: neighbouring reads
            top = ids[np.argsort(-(self.vectors[ids] @ q))[:k]]
            out[i, : len(top)] = top
        return out

    def close(self) -> None:
        self.index = self.vectors = None

    def spec(self) -> dict:
        return {"kind": "faiss-ivfpq", "workdir": str(self.workdir), "nlist": self.nlist,
                "m": self.m, "nprobe": self.nprobe, "refine": self.refine}  # fmt: skip


# -- LanceDB IVF_PQ + refine ----------------------------------------------------------------------


class LanceIvfPq(Peer):
    def __init__(self, workdir: Path, partitions: int, m: int, nprobes: int, refine: int) -> None:
        super().__init__(workdir)
        self.partitions, self.m, self.nprobes, self.refine = partitions, m, nprobes, refine
        self.tag = f"lance-IVF{partitions}-PQ{m}"
        self.table = None

    @property
    def label(self) -> str:
        return (f"LanceDB {lancedb.__version__} IVF{self.partitions}-PQ{self.m} nprobes="
                f"{self.nprobes}/{self.partitions}, refine ×{self.refine}")  # fmt: skip

    def build(self, gallery: np.ndarray, workdir: Path) -> list[Path]:
        d = gallery.shape[1]
        schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), d))])

        def batches():
            for lo, block in float32_blocks(gallery):
                vec = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), d)
                ids = pa.array(np.arange(lo, lo + len(block), dtype=np.int64))
                yield pa.RecordBatch.from_arrays([ids, vec], schema=schema)

        db = lancedb.connect(workdir / "db")
        table = db.create_table("items", pa.RecordBatchReader.from_batches(schema, batches()))
        # max_iterations 10 (Lance's default 50): k-means at 1M would not fit 2 cores today.
        config = IvfPq(distance_type="l2", num_partitions=self.partitions,
                       num_sub_vectors=self.m, max_iterations=10)  # fmt: skip
        table.create_index("vector", config=config)
        return sorted(p for p in (workdir / "db").rglob("*") if p.is_file())

    def open(self) -> None:
        self.table = lancedb.connect(self.workdir / "db").open_table("items")

    def _query(self, q):
        return (self.table.search(q, vector_column_name="vector").nprobes(self.nprobes)
                .refine_factor(self.refine).select(["id", "_distance"]))  # fmt: skip

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        queries = np.asarray(queries, np.float32)
        out = np.full((len(queries), k), -1, np.int64)
        if len(queries) == 1:
            ids = self._query(queries[0]).limit(k).to_arrow()["id"].to_numpy()
            out[0, : len(ids)] = ids
            return out
        found = self._query(list(queries)).limit(k).to_arrow()
        rows = found["query_index"].to_numpy()
        ids = found["id"].to_numpy()
        for i in range(len(queries)):  # each query's hits come ordered by distance
            mine = ids[rows == i][:k]
            out[i, : len(mine)] = mine
        return out

    def close(self) -> None:
        self.table = None

    def spec(self) -> dict:
        return {"kind": "lance-ivfpq", "workdir": str(self.workdir),
                "partitions": self.partitions, "m": self.m, "nprobes": self.nprobes,
                "refine": self.refine}  # fmt: skip


# -- DiskANN, in a worker process under its own venv ---------------------------------------------

WORKER = Path(__file__).with_name("diskann_worker.py")


class _Pipe:
    """A `diskann_worker` process: JSON lines (+ raw arrays) over two pipes."""

    def __init__(self, log: Path) -> None:
        python = diskann_env.ensure()
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(python), str(WORKER), str(to_child), str(from_child)],
                pass_fds=(to_child, from_child), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        os.close(to_child)
        os.close(from_child)
        self.w = os.fdopen(self._w, "wb")
        self.r = os.fdopen(self._r, "rb")
        self.log = log

    def ask(self, req: dict, queries: np.ndarray | None = None):
        if queries is not None:
            queries = np.ascontiguousarray(queries, np.float32)
            req = req | {"shape": list(queries.shape), "nbytes": queries.nbytes}
        self.w.write(json.dumps(req).encode() + b"\n")
        if queries is not None:
            self.w.write(queries.tobytes())
        self.w.flush()
        line = self.r.readline()
        if not line:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"diskann worker exited ({self.proc.wait()}): {tail}")
        head = json.loads(line)
        if "error" in head:
            raise RuntimeError(f"diskann worker: {head['error']}")
        if "nbytes" in head:
            data = self.r.read(head["nbytes"])
            return np.frombuffer(data, np.int64).reshape(head["shape"])
        return head

    def close(self) -> None:
        try:
            self.w.write(b'{"op": "quit"}\n')
            self.w.close()
        except OSError:
            pass
        self.r.close()
        self.proc.wait(timeout=60)


class DiskAnn(Peer):
    def __init__(self, workdir: Path, r: int, build_l: int, pq: int, l: int, w: int,  # noqa: E741
                 threads: int = 2) -> None:  # fmt: skip
        super().__init__(workdir)
        self.r, self.build_l, self.pq, self.l, self.w, self.threads = r, build_l, pq, l, w, threads
        self.tag = f"diskann-R{r}-L{build_l}-PQ{pq}"
        self.pipe: _Pipe | None = None

    @property
    def label(self) -> str:
        return (f"DiskANN (diskannpy {diskann_env.DISKANNPY}, R{self.r}, PQ {self.pq} B in RAM, "
                f"L {self.l}, W {self.w})")  # fmt: skip

    def build(self, gallery: np.ndarray, workdir: Path) -> list[Path]:
        n, d = gallery.shape
        data = workdir / "vectors.f32.bin"  # DiskANN's input format: int32 n, int32 d, rows
        with open(data, "wb") as f:
            f.write(np.array([n, d], np.int32).tobytes())
            for _, block in float32_blocks(gallery):
                f.write(block.tobytes())
        index = workdir / "index"
        index.mkdir(exist_ok=True)
        # DiskANN sizes its in-RAM PQ codes from the search budget: floor(budget / n) bytes.
        search_gb = (self.pq + 0.5) * n / 2**30
        pipe = _Pipe(workdir / "worker.log")
        try:
            pipe.ask({"op": "build", "data": str(data), "dir": str(index), "R": self.r,
                      "L": self.build_l, "search_gb": search_gb, "build_gb": 4.0,
                      "threads": self.threads})  # fmt: skip
        finally:
            pipe.close()
        data.unlink()
        return sorted(p for p in index.iterdir() if p.is_file())

    def pq_bytes(self) -> float:
        """Bytes of PQ code per item DiskANN actually holds in RAM (its compressed file)."""
        (path,) = [p for p in self.files() if p.name.endswith("_pq_compressed.bin")]
        n = int(np.fromfile(path, np.int32, 1)[0])
        return (path.stat().st_size - 8) / n

    def open(self) -> None:
        self.pipe = _Pipe(self.workdir / "worker.log")
        self.pipe.ask({"op": "open", "dir": str(self.workdir / "index"),
                       "threads": self.threads, "cache_nodes": 0})  # fmt: skip

    def _params(self, k: int) -> dict:
        return {"k": k, "L": max(self.l, k), "W": self.w, "threads": self.threads}

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self.pipe.ask({"op": "search"} | self._params(k), queries)

    def latencies(self, queries: np.ndarray, k: int, cold: bool) -> list[float]:
        """Timed inside the worker around diskannpy's search alone (no pipe)."""
        evict = [str(f) for f in self.files()] if cold else []
        req = {"op": "latency", "evict": evict} | self._params(k)
        return self.pipe.ask(req, queries)["seconds"]

    def resident_bytes(self, queries_file: Path) -> dict:
        """A fresh worker: its RSS growth from before the index opens to after the queries."""
        queries = np.load(queries_file)["dense"]
        fresh = DiskAnn(self.workdir, self.r, self.build_l, self.pq, self.l, self.w, self.threads)
        fresh.open()
        try:
            for lo in range(0, len(queries), 50):
                fresh.search(queries[lo : lo + 50], 10)
            return fresh.pipe.ask({"op": "rss"})
        finally:
            fresh.close()

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None
