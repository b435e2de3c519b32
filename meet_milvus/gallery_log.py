"""A gallery's change log in Milvus: its generation counter and what each change did.

Items of a gallery modality get ids in order, never reused while they may be in use; a gallery
changes by **changes**, each one row of the collection `{gallery}_log`:

    id        INT64 (primary)        the generation this change makes
    modality  VARCHAR                `image` or `text`
    lo, hi    INT64                  an add: the ids lo..hi-1 it inserted (lo == hi: none)
    deleted   ARRAY<INT64>(4096)     a delete: the ids it removed (an add: [-1], as Milvus 2.3's
                                     mmap cannot map a segment whose arrays are all empty)
    state     VARCHAR                `pending` while the writer works, `done` after

A writer logs a change `pending`, writes the rows to (or deletes them from) every collection
of the modality, flushes, and marks it `done`. Readers (the local tiers) apply `done` changes
only, in generation order, so none sees a half-written change; a reader that knows generation
g asks for `id > g` (one small query) and reads only the rows those changes name. A writer
killed mid-change leaves it `pending`; the next writer `recover`s it: an add is rolled back
(its rows deleted, its ids given out again), a delete is finished. Milvus 2.3 needs a vector
field in every collection: `v`, two zeros.

A gallery loaded before the log existed (no `{gallery}_log`) is read as one change per modality
adding its `rows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from meet_milvus import milvus_arrays
from meet_milvus.gallery_layout import MODALITIES, Gallery, Modality, side_collections

if TYPE_CHECKING:
    from pymilvus import MilvusClient

MAX_DELETED = 4096  # ids one change deletes (Milvus caps an ARRAY at 4096 elements)
NO_ID = -1  # `deleted` of an add: ids are never negative
State = Literal["pending", "done"]


def log_name(gallery: str) -> str:
    return side_collections(gallery)[0]


@dataclass(frozen=True)
class Change:
    """One logged change of a gallery modality."""

    generation: int
    modality: Modality
    lo: int = 0
    hi: int = 0
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    state: State = "done"

    @property
    def added(self) -> int:
        return self.hi - self.lo

    def row(self) -> dict:
        return {"id": self.generation, "modality": self.modality, "lo": self.lo, "hi": self.hi,
                "deleted": [int(i) for i in self.deleted] or [NO_ID], "state": self.state,
                "v": [0.0, 0.0]}  # fmt: skip


@dataclass
class GalleryState:
    """What the log says of a gallery: its generation, each modality's id bound (ids are
    0..bound-1) and deleted ids; only `done` changes count."""

    generation: int = 0
    bound: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    deleted: dict[str, set[int]] = field(default_factory=lambda: {m: set() for m in MODALITIES})
    pending: list[Change] = field(default_factory=list)

    def apply(self, change: Change) -> None:
        if change.state != "done":
            self.pending.append(change)
            return
        self.generation = max(self.generation, change.generation)
        self.bound[change.modality] = max(self.bound[change.modality], change.hi)
        self.deleted[change.modality].update(int(i) for i in change.deleted)

    def live(self, modality: Modality) -> int:
        return self.bound[modality] - len(self.deleted[modality])

    def dead(self, modality: Modality) -> np.ndarray:
        return np.asarray(sorted(self.deleted[modality]), dtype=np.int64)

    @classmethod
    def of(cls, changes: Sequence[Change]) -> GalleryState:
        state = cls()
        for change in sorted(changes, key=lambda c: c.generation):
            state.apply(change)
        return state


def has_log(client: MilvusClient, gallery: str) -> bool:
    return bool(client.has_collection(log_name(gallery)))


def create_log(client: MilvusClient, gallery: str, initial: dict[str, int]) -> None:
    """The gallery's log, holding one `done` add per modality of `initial` rows (a load's
    rows, or nothing for a gallery `index` starts); kept as it is when it exists."""
    from pymilvus import DataType, MilvusClient

    name = log_name(gallery)
    if not client.has_collection(name):
        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                       description="meet-milvus change log")  # fmt: skip
        s.add_field("id", DataType.INT64, is_primary=True)
        s.add_field("modality", DataType.VARCHAR, max_length=8)
        s.add_field("lo", DataType.INT64)
        s.add_field("hi", DataType.INT64)
        s.add_field("deleted", DataType.ARRAY, element_type=DataType.INT64,
                    max_capacity=MAX_DELETED)  # fmt: skip
        s.add_field("state", DataType.VARCHAR, max_length=8)
        s.add_field("v", DataType.FLOAT_VECTOR, dim=2)
        client.create_collection(name, schema=s, consistency_level="Bounded")
    if not client.list_indexes(name):
        params = client.prepare_index_params()
        params.add_index("v", index_type="FLAT", metric_type="L2")
        client.create_index(name, params)
    client.load_collection(name)
    # Row statistics, not a query: Milvus Lite 2.5 fails a query of an empty collection.
    if not int(client.get_collection_stats(name)["row_count"]):
        rows = [Change(g, m, 0, initial.get(m, 0)).row()
                for g, m in enumerate(MODALITIES, start=1)]  # fmt: skip
        client.insert(name, rows)
        client.flush(name)


def read_changes(
    client: MilvusClient, gallery: str, after: int = 0, consistency: str = "Strong"
) -> list[Change]:
    """The logged changes with a generation above `after`, oldest first."""
    rows = milvus_arrays.call(
        client.query, log_name(gallery), filter=f"id > {int(after)}",
        consistency_level=consistency, retry_times=0,
        output_fields=["id", "modality", "lo", "hi", "deleted", "state"],
    )  # fmt: skip
    changes = [
        Change(int(r["id"]), r["modality"], int(r["lo"]), int(r["hi"]),
               np.asarray([i for i in r["deleted"] or [] if i != NO_ID], dtype=np.int64),
               r["state"])
        for r in rows
    ]  # fmt: skip
    return sorted(changes, key=lambda c: c.generation)


def newer(client: MilvusClient, gallery: str, after: int, consistency: str = "Bounded") -> bool:
    """Whether a change was logged done after generation `after`: one small query, failing at
    once when the server does not answer (a search calls it)."""
    got = milvus_arrays.query_columns(client, log_name(gallery), f"id > {int(after)}",
                                      ["id", "state"], consistency)  # fmt: skip
    return "done" in list(got.get("state", []))


def gallery_state(client: MilvusClient, gallery: Gallery, consistency: str = "Strong"):
    """The gallery's state from its log (a gallery without one: its load's rows)."""
    if not has_log(client, gallery.name):
        return GalleryState.of(
            [Change(g, m, 0, gallery.meta[m].rows) for g, m in enumerate(MODALITIES, start=1)]
        )
    gallery.ensure_loaded(client, log_name(gallery.name))
    return GalleryState.of(read_changes(client, gallery.name, 0, consistency))


def log_change(client: MilvusClient, gallery: str, change: Change, flush: bool = True) -> None:
    """Write (or overwrite, by generation) one change of the log; flushed (unless the caller
    flushes it with the rows), so a server crash cannot lose a change whose rows it kept."""
    client.upsert(log_name(gallery), [change.row()])
    if flush:
        client.flush(log_name(gallery))


def drop_change(client: MilvusClient, gallery: str, generation: int) -> None:
    client.delete(log_name(gallery), filter=f"id in [{int(generation)}]")
    client.flush(log_name(gallery))
