"""The text path of a checkpoint (transformer -> pooling -> projection -> hash head) as one
ONNX Runtime graph, for encoding captions on the CPU.

Why: for one caption torch spends most of its time between operators (9.6 ms, of which the
MiniLM forward pass is 6.9 ms); ONNX Runtime runs the same graph in about a third of that, and a
batch of four for little more than twice one (README, "What a user waits for"). The outputs agree
with torch's within float rounding (tests/test_onnx_text.py states the tolerance).

The graph is exported from the loaded network once and kept under the cache dir, named by the
checkpoint's fingerprint (weights, codebooks and the frozen text model's hash) and the exporter,
so a later process reads it instead of exporting again. The folder is private (0700) and must be
ours: a graph is code the runtime executes, and nobody else may plant one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import warnings
from pathlib import Path

import onnxruntime as ort
import torch
from torch import Tensor, nn

from meet_milvus.files import private_dir, replacing
from meet_milvus.model.network import MeetNet

log = logging.getLogger(__name__)

# Bump when the exported graph changes for the same checkpoint (inputs, outputs, opset).
EXPORT_FORMAT = 1
OPSET = 17
KEEP_GRAPHS = 4  # the most recently used graphs kept in the cache (about 100 MB each for MiniLM)


class _TextPath(nn.Module):
    """`MeetNet.encode_text` with token ids and mask as positional inputs, for the exporter."""

    def __init__(self, net: MeetNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.net.encode_text({"input_ids": input_ids, "attention_mask": attention_mask})


def export_text_path(net: MeetNet) -> bytes:
    """The network's text path as ONNX bytes (batch and caption length left free)."""
    example = net.text_encoder.tokenize(["a caption", "a somewhat longer second caption"])
    args = (example["input_ids"], example["attention_mask"])
    buffer = io.BytesIO()
    free = {0: "batch", 1: "tokens"}
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns of Python branches on shapes (the length check), all static here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _TextPath(net), args, buffer,
                input_names=["input_ids", "attention_mask"], output_names=["dense", "head"],
                dynamic_axes={"input_ids": free, "attention_mask": free,
                              "dense": {0: "batch"}, "head": {0: "batch"}},
                opset_version=OPSET, dynamo=False,
            )  # fmt: skip
    finally:
        net.train(was_training)
    return buffer.getvalue()


def _cache_file(cache_dir: Path, fingerprint: str) -> Path | None:
    """Where the graph of `fingerprint` is kept, or None when the folder is not ours alone."""
    key = hashlib.sha256(f"{fingerprint}|{torch.__version__}|{EXPORT_FORMAT}".encode())
    folder = cache_dir / "onnx"
    try:
        private_dir(folder)
        st = folder.stat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("%s is not private to this user: the text graph is not cached", folder)
        return None
    return folder / f"text-{key.hexdigest()[:32]}.onnx"


def _prune(folder: Path) -> None:
    """Only the `KEEP_GRAPHS` most recently used graphs stay: each retrained checkpoint has its
    own, and the cache must not grow with every one."""
    graphs = sorted(folder.glob("text-*.onnx"), key=lambda f: f.stat().st_mtime, reverse=True)
    for old in graphs[KEEP_GRAPHS:]:
        with contextlib.suppress(OSError):
            old.unlink()


class OnnxTextPath:
    """Callable like `MeetNet.encode_text` (token ids and mask in, dense and head out, torch
    tensors on the CPU), run by ONNX Runtime. The session is built on first use, once."""

    def __init__(self, net: MeetNet, fingerprint: str, cache_dir: Path | None = None) -> None:
        self.net = net
        self.fingerprint = fingerprint
        self.cache_dir = cache_dir
        self._session: ort.InferenceSession | None = None
        self._lock = threading.Lock()

    def load(self) -> ort.InferenceSession:
        with self._lock:
            if self._session is None:
                self._session = self._build()
            return self._session

    def __call__(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        feed = {name: batch[name].cpu().numpy() for name in ("input_ids", "attention_mask")}
        dense, head = self.load().run(None, feed)
        return torch.from_numpy(dense), torch.from_numpy(head)

    def _build(self) -> ort.InferenceSession:
        file = _cache_file(self.cache_dir, self.fingerprint) if self.cache_dir else None
        if file is not None and file.is_file():
            with contextlib.suppress(Exception):  # torn or foreign bytes: export again
                session = self._session_of(file.read_bytes())
                os.utime(file)  # marks it used, for the pruning below
                return session
        graph = export_text_path(self.net)
        session = self._session_of(graph)
        if file is not None:
            with contextlib.suppress(OSError):
                with replacing(file, mode=0o600) as tmp:
                    tmp.write_bytes(graph)
                _prune(file.parent)
        return session

    @staticmethod
    def _session_of(graph: bytes) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same cores torch would use
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
        # Its threads would spin between runs, taking the cores that concurrent callers' stages
        # and the next batch need: 4 callers on the demo got 66 QPS spinning, 147 without.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
