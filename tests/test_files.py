"""meet_milvus.files: a file is replaced whole or not at all, a finished folder takes the place
of an old one, and JSON is read the one way every caller words failures for."""

from __future__ import annotations

import json
import stat

import pytest

from meet_milvus.files import read_json, replace_dir, replacing

pytestmark = pytest.mark.unit


def test_a_file_is_replaced_only_when_its_block_ends_without_an_error(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # the temporary file is gone

    with replacing(path, mode=0o644) as tmp:
        assert tmp.parent == path.parent  # a sibling: the rename stays on one file system
        tmp.write_text("new")
        assert path.read_text() == "old"  # readers see the old file until the block ends
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_finished_folder_takes_the_place_of_the_old_one(tmp_path):
    target, tmp = tmp_path / "tier", tmp_path / ".tier.building"
    (target / "seg").mkdir(parents=True)
    (target / "seg" / "old.bin").write_bytes(b"old")
    tmp.mkdir()
    (tmp / "new.bin").write_bytes(b"new")
    replace_dir(tmp, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.bin"]
    assert not tmp.exists()
    other = tmp_path / "other"
    other.mkdir()
    replace_dir(other, tmp_path / "absent")  # nothing there before: a plain rename
    assert (tmp_path / "absent").is_dir()


def test_json_is_read_as_utf8_with_or_without_a_byte_order_mark(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"caption": "caf\u00e9"}).encode())
    assert read_json(path) == {"caption": "caf\u00e9"}
    path.write_text('{"a": ', encoding="utf-8")
    with pytest.raises(ValueError):
        read_json(path)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(UnicodeDecodeError):
        read_json(path)
    with pytest.raises(OSError):
        read_json(tmp_path / "absent.json")
