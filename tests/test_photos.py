"""What `meet-milvus index` takes in: folders walked recursively, files, globs and manifests
whose rows may lack captions, each item with a stable external id; bad paths refused in one
line before any model loads."""

from __future__ import annotations

import json
import os

import pytest

from meet_milvus.errors import DataSetError, ParameterError
from meet_milvus.writer import NewItem, _checked
from meet_milvus_loaders.photos import collect

pytestmark = pytest.mark.unit


@pytest.fixture
def album(tmp_path):
    for rel in ("a.jpg", "trip/b.PNG", "trip/day2/c.webp", "trip/.hidden.jpg", ".cache/d.jpg",
                "notes.txt"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    return tmp_path


def test_a_folder_is_walked_with_ids_relative_to_it(album):
    items = collect([album])
    assert [i.external_id for i in items] == ["a.jpg", "trip/b.PNG", "trip/day2/c.webp"]
    assert all(i.image == album / i.external_id and not i.captions for i in items)


def test_files_and_globs(album):
    assert [i.external_id for i in collect([album / "trip" / "b.PNG"])] == ["b.PNG"]
    globbed = collect([str(album / "trip" / "**" / "*.webp")])
    assert [i.external_id for i in globbed] == ["day2/c.webp"]


def test_manifest_rows_may_lack_captions_or_images(album):
    manifest = album / "items.jsonl"
    rows = [{"image": "a.jpg"}, {"image": "trip/b.PNG", "captions": ["a boat", " "]},
            {"id": "memo-1", "caption": "a note with no picture"}, {"id": "x", "image": "a.jpg"}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    items = collect([manifest])
    assert [(i.external_id, i.captions) for i in items] == [
        ("a.jpg", ()), ("trip/b.PNG", ("a boat",)), ("memo-1", ("a note with no picture",)),
        ("x", ()),
    ]  # fmt: skip
    assert items[2].image is None and items[0].image == album / "a.jpg"
    csv = album / "items.csv"
    csv.write_text("id,caption\nm1,first\nm2,second\n")
    assert [i.external_id for i in collect([csv])] == ["m1", "m2"]


@pytest.mark.parametrize(
    ("row", "message"),
    [({"captions": ["no id"]}, "need an 'id'"), ({"id": "e"}, "neither an image nor a caption"),
     ({"image": "../outside.jpg"}, "leads outside"), ({"image": "a.jpg", "captions": 3},
                                                      "must be a list")],
)  # fmt: skip
def test_bad_manifest_rows_are_refused_in_one_line(album, row, message):
    manifest = album / "bad.jsonl"
    manifest.write_text(json.dumps(row))
    with pytest.raises(DataSetError, match=message):
        collect([manifest])


def test_bad_paths_are_refused(album, tmp_path):
    with pytest.raises(DataSetError, match="no such file or folder"):
        collect([tmp_path / "nope"])
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(DataSetError, match="not a folder, an image file or a manifest"):
        collect([fifo])


def test_the_digest_follows_content_and_captions(album):
    a = _checked(NewItem("a", image=album / "a.jpg"))
    again = _checked(NewItem("a", image=album / "a.jpg"))
    captioned = _checked(NewItem("a", image=album / "a.jpg", captions=("a cat",)))
    assert a.digest == again.digest != captioned.digest and len(a.digest) == 32
    (album / "a.jpg").write_bytes(b"changed")
    assert _checked(NewItem("a", image=album / "a.jpg")).digest != a.digest
    with pytest.raises(ParameterError, match="not a file"):
        _checked(NewItem("gone", image=album / "gone.jpg"))
