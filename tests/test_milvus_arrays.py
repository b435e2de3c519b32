"""milvus_arrays' documented fallback: a client without pymilvus's internals (another pymilvus)
is read through the public API, with the same results and the requested consistency."""

from __future__ import annotations

import re

import numpy as np
import pytest

from meet_milvus import milvus_arrays
from meet_milvus.errors import GalleryMismatchError

pytestmark = pytest.mark.unit

ROWS = [{"id": i, "source": f"img{i}.jpg", "dense": [float(i), -float(i)]} for i in range(5)]


class PublicOnly:
    """The public MilvusClient API alone: no `_get_connection`, so no raw gRPC path."""

    def __init__(self) -> None:
        self.consistency: list[str] = []

    def query(self, collection, filter, output_fields, consistency_level):  # noqa: A002
        self.consistency.append(consistency_level)
        if m := re.fullmatch(r"id in \[([\d,]*)\]", filter):
            wanted = {int(i) for i in m.group(1).split(",") if i}
        else:
            lo, hi = map(int, re.fullmatch(r"id >= (\d+) and id < (\d+)", filter).groups())
            wanted = set(range(lo, hi))
        return [{f: r[f] for f in output_fields} for r in ROWS if r["id"] in wanted]


def test_fetch_falls_back_to_the_public_api_in_the_order_asked():
    client = PublicOnly()
    got = milvus_arrays.fetch(client, "c", [3, 0, 3], ["source", "dense"], consistency="Strong")
    assert got["source"] == ["img3.jpg", "img0.jpg", "img3.jpg"]
    np.testing.assert_array_equal(got["dense"], [[3, -3], [0, 0], [3, -3]])
    assert client.consistency == ["Strong"]


def test_rows_in_range_falls_back_and_still_refuses_a_gap():
    got = milvus_arrays.rows_in_range(PublicOnly(), "c", 1, 4, ["source"])
    assert got["source"] == ["img1.jpg", "img2.jpg", "img3.jpg"]
    with pytest.raises(GalleryMismatchError, match=r"ids 3\.\.6 hold 2 rows"):
        milvus_arrays.rows_in_range(PublicOnly(), "c", 3, 7, ["source"])
