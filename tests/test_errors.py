"""The error kinds a caller can catch: every one a MeetError (one line for the CLI), raised where
that kind of thing goes wrong."""

import pytest

from meet_milvus import errors
from meet_milvus.cascade import resolve_keep
from meet_milvus.errors import CheckpointError, DataSetError, MeetError, ParameterError
from meet_milvus.gallery_layout import check_gallery_name
from meet_milvus.model.checkpoint import load_checkpoint
from meet_milvus.searcher import check_k
from meet_milvus_loaders.precomp import load_split
from meet_milvus_training.config import TrainConfig
from meet_milvus_training.objective_base import OBJECTIVES
from meet_milvus_training.objectives import build_objective

pytestmark = pytest.mark.unit

KINDS = ("ParameterError", "GalleryNotFoundError", "GalleryMismatchError",
         "ServerUnavailableError", "CheckpointError", "DataSetError")  # fmt: skip


def test_every_kind_is_a_meet_error_and_the_gallery_kinds_share_a_base():
    for name in KINDS:
        kind = getattr(errors, name)
        assert issubclass(kind, MeetError) and kind is not MeetError
        assert name in errors.__doc__  # documented with what it means
    assert issubclass(errors.GalleryNotFoundError, errors.GalleryError)
    assert issubclass(errors.GalleryMismatchError, errors.GalleryError)


def test_raise_sites_use_their_kind(tmp_path):
    with pytest.raises(ParameterError, match="k=0"):
        check_k(0)
    with pytest.raises(ParameterError, match="stage size 0"):
        resolve_keep(0, 10)
    with pytest.raises(ParameterError, match="collection name 'bad-name'"):
        check_gallery_name("bad-name")
    with pytest.raises(CheckpointError, match="no such directory"):
        load_checkpoint(tmp_path / "nope", "cpu")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "ckpt", "cpu")
    with pytest.raises(DataSetError, match="data set 'absent'"):
        load_split(tmp_path, "absent", "test")


def test_objectives_register_on_import_and_an_unknown_one_is_named():
    """Both built-in objectives are there without a lazy import that could hide a broken one."""
    assert {"meet", "coder"} <= set(OBJECTIVES)
    with pytest.raises(ParameterError, match=r"--objective nope: unknown \(known: coder, meet\)"):
        build_objective(TrainConfig(objective="nope"))
