"""Milvus searches and id look-ups as numpy arrays, batched to the server's limits.

Only pymilvus's public MilvusClient API (`search`, `query`), so any pymilvus from 2.5 to 3.x
works: pymilvus turns every hit and row into a dict, which these helpers turn back into arrays
(what that costs beside reading the raw gRPC reply: README, "pymilvus and Milvus versions").
Filters are written literally (`id in [1, 2]`): Milvus 2.3 does not parse filter templates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from pymilvus import Status
from pymilvus.exceptions import MilvusException

from meet_milvus.errors import (
    GalleryMismatchError,
    MilvusError,
    ParameterError,
    ServerUnavailableError,
)

if TYPE_CHECKING:
    from pymilvus import MilvusClient

MAX_TOPK = 16384  # Milvus: topk and nq at most 16384 per search
MAX_NQ = 16384
RPC_BYTES = 48 << 20  # stay well under the 64 MB message limit
ID_CHUNK = 4096  # ids per literal `id in [...]` list
NOT_ANSWERING = ("UNAVAILABLE", "DEADLINE_EXCEEDED")  # gRPC codes of a server gone


def search(
    client: MilvusClient,
    collection: str,
    field: str,
    queries: Sequence[bytes] | np.ndarray,
    limit: int,
    metric: str,
    params: dict | None = None,
    expr: str | None = None,
    consistency: str = "Bounded",
) -> tuple[np.ndarray, np.ndarray]:
    """Top `limit` ids and raw distances per query: (nq, limit) arrays, ids -1 where short.

    `queries` is a list of packed bytes (binary vectors) or a float array (nq, dim).
    """
    if not 1 <= limit <= MAX_TOPK:
        raise ParameterError(f"search limit {limit}: must be between 1 and {MAX_TOPK}")
    nq = len(queries)
    ids = np.full((nq, limit), -1, dtype=np.int64)
    dist = np.full((nq, limit), np.nan, dtype=np.float32)
    query_bytes = len(queries[0]) if nq and isinstance(queries[0], bytes) else 4 * _width(queries)
    # Reply: 12 bytes a hit (int64 id + float32 score); request: the query vectors.
    step = max(1, min(MAX_NQ, RPC_BYTES // (12 * limit), RPC_BYTES // max(query_bytes, 1)))
    for start in range(0, nq, step):
        batch = queries[start : start + step]
        if isinstance(batch, np.ndarray):
            batch = np.ascontiguousarray(batch, dtype=np.float32)
        topks, hit_ids, hit_dist = _search_raw(
            client, collection, field, batch, limit, metric, params or {}, expr, consistency
        )
        offsets = np.concatenate([[0], np.cumsum(topks)])
        for row, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
            ids[start + row, : hi - lo] = hit_ids[lo:hi]
            dist[start + row, : hi - lo] = hit_dist[lo:hi]
    return ids, dist


def fetch(
    client: MilvusClient,
    collection: str,
    ids: np.ndarray | Sequence[int],
    fields: Sequence[str],
    row_bytes: int = 1024,
    consistency: str = "Bounded",
) -> dict[str, np.ndarray | list]:
    """Rows by primary key, in the order of `ids` (duplicates allowed): field -> values.

    Vectors come back as arrays (N, dim) (binary: uint8 (N, dim / 8)), ARRAY fields as
    (N, len) arrays, strings as lists. `row_bytes` estimates a row's size to keep replies small.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    unique = np.unique(ids)
    chunk = max(1, min(ID_CHUNK, RPC_BYTES // max(row_bytes, 1)))
    parts: list[dict[str, Any]] = []
    for start in range(0, len(unique), chunk):
        part = unique[start : start + chunk]
        expr = f"id in [{','.join(map(str, part.tolist()))}]"
        parts.append(_query_raw(client, collection, expr, ["id", *fields], consistency))
    got_ids = np.concatenate([p["id"] for p in parts]) if parts else np.zeros(0, np.int64)
    order = np.argsort(got_ids, kind="stable")
    got_sorted = got_ids[order]
    pos = np.searchsorted(got_sorted, ids)
    pos = np.clip(pos, 0, max(len(got_sorted) - 1, 0))
    if len(ids) and (len(got_sorted) == 0 or (got_sorted[pos] != ids).any()):
        missing = sorted(set(ids.tolist()) - set(got_ids.tolist()))[:5]
        raise GalleryMismatchError(
            f"Milvus collection {collection}: ids {missing} are missing (reload it)"
        )
    take = order[pos]
    out: dict[str, np.ndarray | list] = {}
    for name in fields:
        values = [p[name] for p in parts]
        if not values:
            out[name] = []
        elif isinstance(values[0], list):
            flat = [v for vs in values for v in vs]
            out[name] = [flat[i] for i in take]
        else:
            out[name] = np.concatenate(values)[take]
    return out


def rows_in_range(
    client: MilvusClient, collection: str, lo: int, hi: int, fields: Sequence[str]
) -> dict[str, np.ndarray | list]:
    """The rows with ids lo..hi-1, in id order: field -> values (as `fetch`).

    A gallery's ids are 0..rows-1, so a range must come back whole: a missing or doubled id
    is refused (a gallery that lost rows is never read as if they were zeros).
    """
    got = _query_raw(client, collection, f"id >= {lo} and id < {hi}", ["id", *fields], "Strong")
    ids = np.asarray(got["id"], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    if len(ids) != hi - lo or not np.array_equal(ids[order], np.arange(lo, hi)):
        found = len(np.unique(ids))
        raise GalleryMismatchError(
            f"Milvus collection {collection}: ids {lo}..{hi - 1} hold {len(ids)} rows "
            f"({found} distinct) instead of {hi - lo}; reload the gallery"
        )
    return {
        f: [got[f][i] for i in order] if isinstance(got[f], list) else np.asarray(got[f])[order]
        for f in fields
    }


def ids_in_range(
    client: MilvusClient, collection: str, lo: int, hi: int, step: int = 1 << 20
) -> np.ndarray:
    """The primary keys lo <= id < hi that `collection` holds, sorted, each as often as the
    reply names it (Strong: every write so far)."""
    parts = [np.zeros(0, np.int64)]
    for start in range(lo, hi, step):
        expr = f"id >= {start} and id < {min(hi, start + step)}"
        parts.append(np.asarray(_query_raw(client, collection, expr, ["id"], "Strong")["id"]))
    return np.sort(np.concatenate(parts).astype(np.int64, copy=False))


def query_columns(
    client: MilvusClient, collection: str, expr: str, fields: Sequence[str], consistency: str
) -> dict[str, np.ndarray | list]:
    """The rows matching `expr`, field -> values (scalars as arrays, strings as lists), in the
    server's order; a server that does not answer fails at once (ServerUnavailableError)."""
    return _query_raw(client, collection, expr, list(fields), consistency)


def count(
    client: MilvusClient, collection: str, expr: str = "", consistency: str = "Strong"
) -> int:
    """Rows in `collection` (matching `expr`)."""
    rows = client.query(
        collection, filter=expr, output_fields=["count(*)"], consistency_level=consistency
    )
    return int(rows[0]["count(*)"])


def call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """method(*args, **kwargs), a MilvusClient call whose failure is one line:
    ServerUnavailableError when nothing answers, MilvusError with Milvus's message otherwise."""
    try:
        return method(*args, **kwargs)
    except (MilvusException, grpc.RpcError) as e:
        if _rpc_code(e) in NOT_ANSWERING:
            raise ServerUnavailableError(f"not answering ({_rpc_code(e).lower()})") from None
        if isinstance(e, MilvusException) and e.code == Status.CONNECT_FAILED:
            # pymilvus 3 reconnects on its own first, then says only that it could not
            raise ServerUnavailableError("not answering (cannot connect)") from None
        message = e.details() if isinstance(e, grpc.RpcError) else e.message
        raise MilvusError(f"Milvus: {' '.join(str(message).split())}") from None


def _rpc_code(error: BaseException | None) -> str:
    """The gRPC status behind an error, or ''. pymilvus wraps it in a MilvusException whose
    `code` is the status (3.x) or the RpcError's `code` method (2.5), and may re-raise that as
    `e from e`, losing the RpcError from the chain."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code = getattr(error, "code", None)
        if isinstance(error, grpc.RpcError | MilvusException) and callable(code):
            code = code()
        if isinstance(code, grpc.StatusCode):
            return code.name
        error = error.__cause__
    return ""


# ---------------------------------------------------------------------------------------------

# Searches and queries are not retried inside pymilvus (its default is up to 75 tries, minutes
# against a dead server): a failed call says so at once, and the searcher reconnects.
_NO_RETRY = {"retry_times": 0}


def _width(queries: Any) -> int:
    shape = np.shape(queries)
    return int(shape[1]) if len(shape) == 2 else 1


def _search_raw(
    client: MilvusClient,
    collection: str,
    field: str,
    data: Any,
    limit: int,
    metric: str,
    params: dict,
    expr: str | None,
    consistency: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One search request: hits per query, then every hit's id and distance, in order."""
    hits = call(
        client.search, collection, data=list(data), anns_field=field, limit=limit,
        search_params={"metric_type": metric, "params": params}, filter=expr or "",
        consistency_level=consistency, **_NO_RETRY,
    )  # fmt: skip
    topks = np.array([len(h) for h in hits], dtype=np.int64)
    ids = np.array([x["id"] for h in hits for x in h], dtype=np.int64)
    dist = np.array([x["distance"] for h in hits for x in h], dtype=np.float32)
    return topks, ids, dist


def _query_raw(
    client: MilvusClient, collection: str, expr: str, fields: list[str], consistency: str
) -> dict[str, Any]:
    """One query request, as columns (field -> values)."""
    rows = call(
        client.query, collection, filter=expr, output_fields=fields,
        consistency_level=consistency, **_NO_RETRY,
    )  # fmt: skip
    return _columns_from_rows(rows, fields)


def _columns_from_rows(rows: list[dict], fields: list[str]) -> dict[str, Any]:
    """Query rows as columns: strings as lists, binary vectors as uint8 (n, bytes), float
    vectors and ARRAY fields as (n, width) arrays (int64 or float32), scalars as int64."""
    out: dict[str, Any] = {}
    for name in fields:
        values = [r[name] for r in rows]
        if values and isinstance(values[0], list) and values[0]:
            if isinstance(values[0][0], bytes):  # pymilvus 2.5: a binary vector as [bytes]
                values = [v[0] for v in values]
        first = values[0] if values else None
        if isinstance(first, str):
            out[name] = values
        elif isinstance(first, bytes):
            out[name] = np.frombuffer(b"".join(values), np.uint8).reshape(len(values), -1)
        elif first is None or np.ndim(first) == 0:
            out[name] = np.asarray(values, dtype=np.int64)
        else:
            array = np.asarray(values)
            out[name] = array.astype(np.int64 if array.dtype.kind in "iub" else np.float32)
    return out
