"""Captions through ONNX Runtime: the same encodings as torch's within a stated tolerance, one
export per checkpoint kept in a private cache, and the choice of runtime checked."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from meet_milvus.errors import ParameterError
from meet_milvus.model import load_checkpoint, onnx_text
from meet_milvus.model.onnx_text import OnnxTextPath

CAPTIONS = [
    "a red fish",
    "A small brown dog runs across the green grass towards a yellow ball near the old fence.",
    "tux",
    "two penguins and a snowman " * 20,  # longer than the model reads: truncated alike
]
# Float rounding differs between the runtimes (fused kernels, other summation orders).
DENSE_ATOL = 1e-4
HEAD_ATOL = 1e-4


@pytest.mark.integration
def test_onnx_encodings_agree_with_torch(demo_checkpoint, tmp_path) -> None:
    onnx = load_checkpoint(demo_checkpoint, "cpu", tmp_path, text_runtime="onnx")
    torch_ = load_checkpoint(demo_checkpoint, "cpu", text_runtime="torch")
    assert isinstance(onnx._text_path, OnnxTextPath)
    assert not isinstance(torch_._text_path, OnnxTextPath)
    # Each caption alone and all in one padded batch: padding must not change an encoding.
    for batch in [[c] for c in CAPTIONS] + [CAPTIONS]:
        a, b = onnx.encode_texts(batch), torch_.encode_texts(batch)
        np.testing.assert_allclose(a.dense, b.dense, atol=DENSE_ATOL, rtol=0)
        np.testing.assert_allclose(a.head, b.head, atol=HEAD_ATOL, rtol=0)
        clear = np.abs(b.head) > HEAD_ATOL  # a bit is only as stable as its margin from 0
        assert ((a.head > 0) == (b.head > 0))[clear].all()
    together = onnx.encode_texts(CAPTIONS)
    alone = np.concatenate([onnx.encode_texts([c]).dense for c in CAPTIONS])
    np.testing.assert_allclose(together.dense, alone, atol=DENSE_ATOL, rtol=0)


@pytest.mark.integration
def test_the_graph_is_exported_once_and_kept_private(demo_checkpoint, tmp_path, monkeypatch):
    first = load_checkpoint(demo_checkpoint, "cpu", tmp_path, text_runtime="onnx")
    expected = first.encode_texts(CAPTIONS[:2])
    folder = tmp_path / "onnx"
    (graph,) = folder.glob("text-*.onnx")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(graph.stat().st_mode) == 0o600

    def no_export(net):
        raise AssertionError("exported again although the graph is cached")

    monkeypatch.setattr(onnx_text, "export_text_path", no_export)
    again = load_checkpoint(demo_checkpoint, "cpu", tmp_path, text_runtime="onnx")
    np.testing.assert_array_equal(again.encode_texts(CAPTIONS[:2]).dense, expected.dense)

    # A torn file (a crash mid-write by an older version, a full disk) is exported again.
    monkeypatch.undo()
    graph.write_bytes(graph.read_bytes()[:1000])
    torn = load_checkpoint(demo_checkpoint, "cpu", tmp_path, text_runtime="onnx")
    np.testing.assert_array_equal(torn.encode_texts(CAPTIONS[:2]).dense, expected.dense)
    assert graph.stat().st_size > 1000


@pytest.mark.unit
def test_only_the_newest_graphs_stay(tmp_path) -> None:
    for i in range(onnx_text.KEEP_GRAPHS + 3):
        f = tmp_path / f"text-{i}.onnx"
        f.write_bytes(b"x")
        os.utime(f, (1000 + i, 1000 + i))
    (tmp_path / "other.bin").write_bytes(b"y")
    onnx_text._prune(tmp_path)
    kept = sorted(f.name for f in tmp_path.glob("text-*.onnx"))
    assert kept == sorted(f"text-{i}.onnx" for i in range(3, onnx_text.KEEP_GRAPHS + 3))
    assert (tmp_path / "other.bin").exists()


@pytest.mark.unit
def test_a_cache_folder_of_another_user_is_not_used(tmp_path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a folder away")
    folder = tmp_path / "onnx"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    assert onnx_text._cache_file(tmp_path, "abc") is None
    mine = tmp_path / "mine"
    assert onnx_text._cache_file(mine, "abc").parent == mine / "onnx"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("device", "runtime", "message"),
    [
        ("cpu", "tensorrt", "text runtime 'tensorrt': expected auto, torch or onnx"),
        ("cuda", "onnx", "text runtime onnx runs on the CPU, not on cuda"),
    ],
)
def test_a_wrong_text_runtime_is_one_clear_error(tmp_path, device, runtime, message) -> None:
    with pytest.raises(ParameterError, match=message):
        load_checkpoint(tmp_path, device, text_runtime=runtime)
