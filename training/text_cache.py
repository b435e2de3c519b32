"""Frozen-transformer token states computed once per unique caption and cached on disk.

With a frozen BERT-family encoder only the projection and pooling train, so the transformer's
output for a caption never changes: computing it once (keyed by model hash + texts) turns each
training step's text side into a table lookup.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from meet_milvus.files import replacing
from meet_milvus.model.encoders import BertTextEncoder
from meet_milvus.progress import progress_bar

# Part of the key: states made by another implementation of the same model may differ in the
# last float16 bit (2: meet_milvus.model.bert replaced transformers for plain BERT models).
STATES_VERSION = 2


class TokenStateCache:
    """Token states (float16) of a fixed set of texts; `lookup` gives padded (states, mask)."""

    def __init__(self, texts: list[str], states: Tensor, offsets: Tensor) -> None:
        self.row = {t: i for i, t in enumerate(texts)}
        self.states = states
        self.offsets = offsets

    def __contains__(self, text: str) -> bool:
        return text in self.row

    def covers(self, texts: list[str]) -> bool:
        return all(t in self.row for t in texts)

    def lookup(self, texts: list[str]) -> dict[str, Tensor]:
        rows = [self.row[t] for t in texts]
        starts = self.offsets[rows]
        lengths = self.offsets[[r + 1 for r in rows]] - starts
        width = int(lengths.max())
        states = torch.zeros(len(rows), width, self.states.shape[1])
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
            states[i, :n] = self.states[s : s + n].float()
            mask[i, :n] = True
        return {"states": states, "mask": mask}

    @classmethod
    def build(
        cls,
        encoder: BertTextEncoder,
        texts: list[str],
        cache_dir: Path,
        model_sha: str,
        device: str = "cpu",
        batch_size: int = 256,
        progress: bool = True,
    ) -> TokenStateCache:
        unique = sorted(set(texts))
        key = hashlib.sha256(
            "\n".join([model_sha, f"v{STATES_VERSION}", str(encoder.max_len), *unique]).encode()
        ).hexdigest()[:32]
        path = Path(cache_dir) / "text_states" / f"{key}.safetensors"
        if path.is_file():
            data = load_file(str(path))
            return cls(unique, data["states"], data["offsets"])
        # Longest first: padding within a batch stays small and the first batch bounds memory.
        order = sorted(range(len(unique)), key=lambda i: -len(unique[i]))
        per_text: list[Tensor | None] = [None] * len(unique)
        was_training = encoder.training
        encoder.eval()
        bar = progress_bar(total=len(unique), desc="text states", unit="cap", enabled=progress)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            tok = encoder.tokenize([unique[i] for i in idx])
            with torch.no_grad():
                states = encoder.token_states(
                    tok["input_ids"].to(device), tok["attention_mask"].to(device)
                )
            states = states.half().cpu()
            for j, i in enumerate(idx):
                per_text[i] = states[j, : int(tok["attention_mask"][j].sum())]
            bar.update(len(idx))
        bar.close()
        encoder.train(was_training)
        lengths = torch.tensor([0] + [t.shape[0] for t in per_text])
        offsets = torch.cumsum(lengths, 0)
        states = torch.cat(per_text) if per_text else torch.zeros(0, 1, dtype=torch.float16)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            save_file({"states": states.contiguous(), "offsets": offsets}, str(tmp))
        return cls(unique, states, offsets)
