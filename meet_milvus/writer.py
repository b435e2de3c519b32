"""`GalleryWriter`: add items to a gallery, replace changed ones, delete them.

from meet_milvus import GalleryWriter, NewItem
writer = GalleryWriter("photos", checkpoint="~/.meet-milvus/data/checkpoints/demo", pool=pool)
report = writer.add([NewItem("dogs/1.jpg", image="~/Pictures/dogs/1.jpg")])
writer.delete(["dogs/1.jpg"])

An item is an image file (with captions or none) or captions alone, named by a stable external
id (a path relative to the indexed folder, or a manifest's id); its captions are the text
items `ID#0`, `ID#1`, ... Adding an id the gallery holds with the same content (digest) does
nothing; with other content, the old item is deleted and the new one added (a changed photo is
encoded again). Files that cannot be read are skipped and reported, never abort the batch.

Each batch is logged changes in Milvus (meet_milvus.gallery_rows, meet_milvus.gallery_log) and
then appended to this machine's local tiers, which searchers here take up on their next call.
One writer at a time per gallery on this machine (a lock file beside the tiers); a writer
killed mid-change leaves it pending, and the next writer repairs it first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meet_milvus.config import Settings, load_settings
from meet_milvus.errors import GalleryMismatchError, GalleryNotFoundError, ParameterError
from meet_milvus.gallery_layout import (
    MODALITIES,
    DenseIndex,
    Gallery,
    Modality,
    check_dense_index,
    check_gallery_name,
    open_gallery,
)
from meet_milvus.gallery_log import GalleryState, gallery_state
from meet_milvus.gallery_rows import (
    Items,
    Origin,
    append_items,
    create_gallery,
    delete_items,
    recover,
)
from meet_milvus.inputs import check_text
from meet_milvus.model.checkpoint import load_checkpoint
from meet_milvus.model.features import GridFeatureExtractor
from meet_milvus.model.meet_model import Encoded, MeetModel
from meet_milvus.pool import Pool, read_pool
from meet_milvus.reader import open_tier
from meet_milvus.server import connect
from meet_milvus.tier import LocalTier, tier_dir
from meet_milvus.tier_write import append_rows, mark_deleted, set_generation

DEFAULT_NEIGHBOURS = 32  # k of the re-ranking statistics of a gallery `index` starts
BATCH = 1000  # items encoded and written as one change per modality
CAPTION_SEP = "#"  # a caption's external id: ITEM#n


@dataclass(frozen=True)
class NewItem:
    """One item to index: an image file with its captions (maybe none), or captions alone."""

    external_id: str
    image: str | Path | None = None
    captions: tuple[str, ...] = ()
    digest: str = ""  # content hash; computed from the file's bytes and captions when empty

    def content_digest(self) -> str:
        if self.digest:
            return self.digest
        h = hashlib.sha256()
        if self.image is not None:
            with open(self.image, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        for caption in self.captions:
            h.update(b"\0" + caption.encode("utf-8"))
        return h.hexdigest()[:32]


@dataclass
class WriteReport:
    """What an add or a delete did."""

    gallery: str
    added: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    replaced: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (external id, why)
    repaired: list[str] = field(default_factory=list)
    generation: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [*self.repaired]
        out.append(
            f"gallery '{self.gallery}': added {self.added['image']} images and "
            f"{self.added['text']} captions, replaced {self.replaced} changed items, kept "
            f"{self.unchanged} unchanged, deleted {self.deleted['image']} images and "
            f"{self.deleted['text']} captions (generation {self.generation}, "
            f"{self.seconds:.1f} s)"
        )
        out += [f"skipped {ext}: {why}" for ext, why in self.skipped]
        return out


@dataclass
class _Known:
    """The gallery's live items, by external id of the unit (image, or captions alone)."""

    digest: dict[str, str] = field(default_factory=dict)
    ids: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # unit -> image file (images only)

    def add(self, unit: str, modality: Modality, item: int, digest: str, source: str) -> None:
        self.digest.setdefault(unit, digest)
        self.ids.setdefault(unit, {m: [] for m in MODALITIES})[modality].append(item)
        if modality == "image":
            self.source[unit] = source


class GalleryWriter:
    """Adds, replaces and deletes items of a gallery (see the module docstring).

    A gallery that does not exist yet is made on the first `add`, with `checkpoint`'s model
    and the reference pool `pool` (meet_milvus.pool: its re-ranking statistics are taken
    against it). An existing gallery keeps its model and pool; `checkpoint` defaults to the one
    it was made with.
    """

    def __init__(
        self,
        collection: str,
        checkpoint: str | Path | None = None,
        settings: Settings | None = None,
        pool: Pool | None = None,
        neighbours: int = DEFAULT_NEIGHBOURS,
        dense_index: DenseIndex = "HNSW",
    ) -> None:
        self.settings = settings or load_settings()
        self.dense_index = check_dense_index(dense_index)  # a new gallery's (gallery_layout)
        self.name = check_gallery_name(collection)
        self.client = connect(self.settings)
        self.gallery: Gallery | None = None
        with contextlib.suppress(GalleryNotFoundError):
            self.gallery = open_gallery(self.client, collection,
                                        mapped=self.settings.maps_segments)  # fmt: skip
        path = checkpoint or self.settings.checkpoint
        if path is None and self.gallery is not None:
            path = self.gallery.meta["image"].checkpoint
        if not path:
            raise GalleryNotFoundError(
                f"collection '{collection}': not in Milvus yet; to make it, index files into it "
                f"with a checkpoint (`meet-milvus index PATH --collection {collection} "
                f"--checkpoint DIR`)"
            )
        self.model: MeetModel = load_checkpoint(path, self.settings.device,
                                                self.settings.cache_dir)  # fmt: skip
        self.checkpoint = Path(path)
        if self.gallery is not None:
            self._check_writable(self.gallery)
            self.pool = read_pool(self.client, collection)
            if self.pool is None:
                raise GalleryMismatchError(
                    f"collection '{collection}': loaded with the split's own re-ranking "
                    f"statistics (load --stats split), so items cannot be added consistently; "
                    f"rebuild it with `meet-milvus load --collection {collection} --drop`"
                )
        else:
            self.pool = pool
        self.neighbours = neighbours
        self._extractor: GridFeatureExtractor | None = None

    # -- public -------------------------------------------------------------------------------

    def add(
        self, items: Sequence[NewItem], batch: int = BATCH, progress: bool = False
    ) -> WriteReport:
        """Index `items`: new ones added, changed ones replaced, unchanged ones left."""
        start = time.perf_counter()
        report = WriteReport(self.name)
        with self._locked():
            gallery, state, tiers = self._open(report)
            known = _known(tiers)
            todo, seen = [], set()
            replaced: dict[str, list[int]] = {m: [] for m in MODALITIES}
            for item in items:
                if not item.external_id or item.external_id in seen:
                    why = "no id" if not item.external_id else "listed twice (first one kept)"
                    report.skipped.append((item.external_id, why))
                    continue
                seen.add(item.external_id)
                try:
                    item = _checked(item)
                except (OSError, ParameterError) as e:
                    report.skipped.append((item.external_id, _reason(e)))
                    continue
                old = known.digest.get(item.external_id)
                if old == item.digest:
                    report.unchanged += 1
                    continue
                if old is not None:
                    report.replaced += 1
                    for m in MODALITIES:
                        replaced[m] += known.ids[item.external_id][m]
                todo.append(item)
            # The old versions go first: a writer killed in between leaves the item missing
            # (the next run adds it), never in the gallery twice.
            for m in MODALITIES:
                state = self._delete(gallery, state, tiers, m, replaced[m], report)
            for lo in range(0, len(todo), batch):
                state = self._add_batch(gallery, state, tiers, todo[lo : lo + batch], report,
                                        progress)  # fmt: skip
            report.generation = state.generation
        report.seconds = time.perf_counter() - start
        return report

    def delete(self, external_ids: Iterable[str] = (), missing: bool = False) -> WriteReport:
        """Delete items by external id (an image with its captions; `ID#n` one caption), and
        with `missing`, every image whose file is gone (with its captions)."""
        start = time.perf_counter()
        report = WriteReport(self.name)
        with self._locked():
            gallery, state, tiers = self._open(report)
            known = _known(tiers)
            doomed: dict[str, list[int]] = {m: [] for m in MODALITIES}
            for ext in external_ids:
                if ext in known.ids:
                    for m in MODALITIES:
                        doomed[m] += known.ids[ext][m]
                    continue
                unit, _, n = ext.rpartition(CAPTION_SEP)
                found = [i for i in known.ids.get(unit, {}).get("text", [])
                         if tiers["text"].text("external_id", np.array([i]))[0] == ext]  # fmt: skip
                if not found or not n.isdigit():
                    report.skipped.append((ext, "not in the gallery"))
                doomed["text"] += found
            if missing:
                for unit, source in known.source.items():
                    if not os.path.exists(source):
                        for m in MODALITIES:
                            doomed[m] += known.ids[unit][m]
            for m in MODALITIES:
                state = self._delete(gallery, state, tiers, m, doomed[m], report)
            report.generation = state.generation
        report.seconds = time.perf_counter() - start
        return report

    def external_ids(self) -> list[str]:
        """The external ids of the gallery's live items (images, then captions alone)."""
        if self.gallery is None:
            return []
        with self._locked():
            _, _, tiers = self._open(WriteReport(self.name))
            return list(_known(tiers).digest)

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer per gallery on this machine (a lock file beside its tiers)."""
        folder = tier_dir(self.settings, self.name, "image").parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(folder / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _check_writable(self, gallery: Gallery) -> None:
        meta = gallery.meta["image"]
        if meta.fingerprint != self.model.config.fingerprint:
            raise GalleryMismatchError(
                f"collection '{self.name}' holds model {meta.fingerprint[:12]}'s codes, not "
                f"this checkpoint's {self.model.config.fingerprint[:12]}"
            )
        if meta.meet_milvus < 2:
            raise GalleryMismatchError(
                f"collection '{self.name}': loaded by an earlier meet-milvus (format "
                f"{meta.meet_milvus}); rebuild it with `meet-milvus load --collection "
                f"{self.name} --drop` to add items"
            )

    def _open(self, report: WriteReport) -> tuple[Gallery, GalleryState, dict[str, LocalTier]]:
        """The gallery (made when new), its state with any interrupted change repaired, and
        this machine's tiers caught up with it."""
        if self.gallery is None:
            if self.pool is None:
                raise ParameterError(
                    f"collection '{self.name}' is new: it needs a reference pool for its "
                    f"re-ranking statistics (pool=)"
                )
            origin = Origin.of(self.model, "index", str(self.checkpoint.resolve()))
            self.gallery = create_gallery(self.client, self.name, origin,
                                          self.model.config.embed_dim, self.neighbours,
                                          self.pool, self.dense_index)  # fmt: skip
        gallery = self.gallery
        for name in gallery.collections():
            gallery.ensure_loaded(self.client, name)
        state = gallery_state(self.client, gallery)
        report.repaired += recover(self.client, gallery, state)
        if report.repaired:
            state = gallery_state(self.client, gallery)
        tiers = {m: open_tier(self.client, gallery, m, self.settings, state=state)
                 for m in MODALITIES}  # fmt: skip
        return gallery, state, tiers

    def _delete(
        self, gallery: Gallery, state: GalleryState, tiers: dict[str, LocalTier],
        modality: Modality, ids: list[int], report: WriteReport,
    ) -> GalleryState:  # fmt: skip
        if not ids:
            return state
        changes = delete_items(self.client, gallery, modality, np.asarray(ids),
                               state.generation + 1)  # fmt: skip
        top = changes[-1].generation
        mark_deleted(tiers[modality].path, np.asarray(ids, np.int64), top)
        for m in MODALITIES:
            set_generation(tiers[m].path, top)
            tiers[m].refresh()
        for change in changes:
            state.apply(change)
        report.deleted[modality] += len(set(ids))
        return state

    def _add_batch(
        self, gallery: Gallery, state: GalleryState, tiers: dict[str, LocalTier],
        items: list[NewItem], report: WriteReport, progress: bool,
    ) -> GalleryState:  # fmt: skip
        with_image = [it for it in items if it.image is not None]
        errors: dict[int, str] = {}
        if self._extractor is None:
            self._extractor = GridFeatureExtractor(self.model.device, self.settings.cache_dir)
        features = self._extractor.extract([it.image for it in with_image], progress=progress,
                                     errors=errors)  # fmt: skip
        for i in sorted(errors):
            report.skipped.append((with_image[i].external_id, errors[i].split(": ", 1)[-1]))
        keep = [i for i in range(len(with_image)) if i not in errors]
        images = [with_image[i] for i in keep]
        image_id: dict[str, int] = {}
        if images:
            lo = state.bound["image"]
            encoded = self.model.encode_images(features[keep])
            rows = self._items("image", encoded, [str(Path(it.image).resolve()) for it in images],
                               [it.external_id for it in images],
                               np.arange(lo, lo + len(images)), [it.digest for it in images])
            state = self._append(gallery, state, tiers, "image", rows)
            report.added["image"] += len(rows)
            image_id = {it.external_id: lo + n for n, it in enumerate(images)}
        texts = [(it, n, c) for it in items for n, c in enumerate(it.captions)
                 if it.image is None or it.external_id in image_id]  # fmt: skip
        if texts:
            encoded = self.model.encode_texts([c for _, _, c in texts])
            rows = self._items(
                "text", encoded, [c for _, _, c in texts],
                [f"{it.external_id}{CAPTION_SEP}{n}" for it, n, _ in texts],
                np.asarray([image_id.get(it.external_id, -1) for it, _, _ in texts]),
                [it.digest for it, _, _ in texts],
            )  # fmt: skip
            state = self._append(gallery, state, tiers, "text", rows)
            report.added["text"] += len(rows)
        return state

    def _items(
        self, modality: Modality, encoded: Encoded, source: list[str], external: list[str],
        image: np.ndarray, digest: list[str],
    ) -> Items:  # fmt: skip
        k = self.gallery.meta[modality].neighbours
        stats = self.pool.stats(modality, encoded.dense, k)
        return Items(encoded, source, external, np.asarray(image, np.int64), stats, digest)

    def _append(
        self, gallery: Gallery, state: GalleryState, tiers: dict[str, LocalTier],
        modality: Modality, rows: Items,
    ) -> GalleryState:  # fmt: skip
        lo = state.bound[modality]
        change = append_items(self.client, gallery, modality, rows, lo, state.generation + 1)
        append_rows(tiers[modality].path, lo, rows.chunks(), change.generation)
        for m in MODALITIES:
            set_generation(tiers[m].path, change.generation)
            tiers[m].refresh()
        state.apply(change)
        return state


def _known(tiers: dict[str, LocalTier]) -> _Known:
    known = _Known()
    for modality, tier in tiers.items():
        dead = tier.dead()
        ids = np.arange(tier.rows) if dead is None else np.flatnonzero(~dead)
        if not len(ids):
            continue
        external = tier.text("external_id", ids)
        digest = tier.text("digest", ids)
        source = tier.text("source", ids) if modality == "image" else [""] * len(ids)
        for i, ext, dig, src in zip(ids, external, digest, source, strict=True):
            unit = ext if modality == "image" else ext.rpartition(CAPTION_SEP)[0] or ext
            known.add(unit, modality, int(i), dig, src)
    return known


def _checked(item: NewItem) -> NewItem:
    """The item with its digest, its captions checked; OSError when its file is unreadable."""
    for n, caption in enumerate(item.captions):
        check_text(caption, f"{item.external_id}: caption {n}")
    if item.image is None and not item.captions:
        raise ParameterError("neither an image nor a caption")
    if item.image is not None and not Path(item.image).is_file():
        raise ParameterError("not a file")
    return NewItem(item.external_id, item.image, tuple(item.captions), item.content_digest())


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):
        return f"cannot read ({e.strerror or e})"
    return str(e)
