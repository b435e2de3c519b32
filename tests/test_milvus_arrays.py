"""milvus_arrays reads Milvus through pymilvus's public MilvusClient API only: the rows of a
query come back as columns in the order asked, with the requested consistency and no retries
inside pymilvus; a failed call is one line (ServerUnavailableError when nothing answers)."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from pymilvus.exceptions import MilvusException

from meet_milvus import milvus_arrays
from meet_milvus.errors import GalleryMismatchError, MilvusError, ServerUnavailableError

pytestmark = pytest.mark.unit

ROWS = [
    {"id": i, "source": f"img{i}.jpg", "dense": [float(i), -float(i)], "codes": [i, 2 * i],
     "hash": [bytes([i, 255 - i])]}
    for i in range(5)
]  # fmt: skip


class PublicOnly:
    """The public MilvusClient API's `query`, answering from ROWS as pymilvus 2.5 shapes them."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def query(self, collection, filter, output_fields, **kwargs):  # noqa: A002
        self.calls.append(kwargs)
        if m := re.fullmatch(r"id in \[([\d,]*)\]", filter):
            wanted = {int(i) for i in m.group(1).split(",") if i}
        else:
            lo, hi = map(int, re.fullmatch(r"id >= (\d+) and id < (\d+)", filter).groups())
            wanted = set(range(lo, hi))
        return [{f: r[f] for f in output_fields} for r in ROWS if r["id"] in wanted]


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "failed to connect to all addresses"


class Failing:
    """A client whose every call raises `error`."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def query(self, *args, **kwargs):
        raise self.error

    search = query


def test_fetch_reads_columns_in_the_order_asked_without_retries():
    client = PublicOnly()
    got = milvus_arrays.fetch(
        client, "c", [3, 0, 3], ["source", "dense", "codes", "hash"], consistency="Strong"
    )
    assert got["source"] == ["img3.jpg", "img0.jpg", "img3.jpg"]
    np.testing.assert_array_equal(got["dense"], [[3, -3], [0, 0], [3, -3]])
    assert got["dense"].dtype == np.float32
    np.testing.assert_array_equal(got["codes"], [[3, 6], [0, 0], [3, 6]])
    assert got["codes"].dtype == np.int64
    np.testing.assert_array_equal(got["hash"], [[3, 252], [0, 255], [3, 252]])
    assert got["hash"].dtype == np.uint8
    assert client.calls == [{"consistency_level": "Strong", "retry_times": 0}]


def test_rows_in_range_refuses_a_gap():
    got = milvus_arrays.rows_in_range(PublicOnly(), "c", 1, 4, ["source"])
    assert got["source"] == ["img1.jpg", "img2.jpg", "img3.jpg"]
    with pytest.raises(GalleryMismatchError, match=r"ids 3\.\.6 hold 2 rows"):
        milvus_arrays.rows_in_range(PublicOnly(), "c", 3, 7, ["source"])


def test_a_server_that_does_not_answer_is_one_line_at_once():
    # pymilvus wraps the gRPC error in a MilvusException (its retry decorator) or lets it through.
    wrapped = MilvusException(message="Retry run out of 0 retry times, message=unavailable")
    wrapped.__cause__ = Unavailable()
    for error in (wrapped, Unavailable()):
        with pytest.raises(ServerUnavailableError) as e:
            milvus_arrays.fetch(Failing(error), "c", [1], ["source"])
        assert str(e.value) == "not answering (unavailable)"
        with pytest.raises(ServerUnavailableError):
            milvus_arrays.search(Failing(error), "c", "hash", [b"\x00"], 3, "HAMMING")
    # What pymilvus 2.5 raises: the RpcError's code method as the code, the chain lost.
    bare = Unavailable()
    shaped = MilvusException(code=bare.code, message="[search] Retry run out of 0 retry times")
    shaped.__cause__ = shaped
    # ... and pymilvus 3: the status itself.
    for error in (shaped, MilvusException(code=grpc.StatusCode.UNAVAILABLE, message="gone")):
        with pytest.raises(ServerUnavailableError, match=r"^not answering \(unavailable\)$"):
            milvus_arrays.fetch(Failing(error), "c", [1], ["source"])
    # pymilvus 3, after its own attempt to reconnect.
    lost = MilvusException(code=2, message="Fail connecting to server on 127.0.0.1:9")
    with pytest.raises(ServerUnavailableError, match=r"^not answering \(cannot connect\)$"):
        milvus_arrays.fetch(Failing(lost), "c", [1], ["source"])


def test_another_milvus_error_is_one_line_naming_milvus():
    error = MilvusException(code=100, message="collection not loaded:\n  c")
    error.__cause__ = error  # what pymilvus's `raise e from e` leaves
    with pytest.raises(MilvusError) as e:
        milvus_arrays.rows_in_range(Failing(error), "c", 0, 2, ["source"])
    assert str(e.value) == "Milvus: collection not loaded: c"
