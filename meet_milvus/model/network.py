"""The network: image and text encoders into the joint space, a hash head per modality."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from meet_milvus.model.config import ModelConfig
from meet_milvus.model.encoders import (
    BertTextEncoder,
    BiGRUTextEncoder,
    ImageEncoder,
    LazyTransformer,
    load_transformer,
)
from meet_milvus.model.fusion import ConceptFusion
from meet_milvus.model.hashing import HashHead
from meet_milvus.model.vocab import Vocabulary

TRANSFORMER_PREFIX = "text_encoder.transformer."


@dataclass
class Outputs:
    """A batch's embeddings: dense (B, E) unit vectors and hash-head outputs (B, H) in (-1, 1)."""

    img_dense: Tensor
    txt_dense: Tensor
    img_head: Tensor
    txt_head: Tensor


class MeetNet(nn.Module):
    """Encoders + hash heads. The heads read the dense embedding detached (as the reference), so
    the code objectives shape the codes without pulling the dense space."""

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        embed: int,
        bits: int,
        concepts: ConceptFusion | None = None,
    ):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        # CODER's concept branch: the dense embedding becomes instance + concept (fused).
        self.concepts = concepts
        self.encoders_frozen = False
        self.embed = embed
        self.reset_heads(bits)

    def reset_heads(self, bits: int) -> None:
        """New hash heads (also to train codes on a pretrained encoder, --init_from)."""
        self.image_head = HashHead(self.embed, bits)
        self.text_head = HashHead(self.embed, bits)
        # Both heads start from the same random hyperplanes (SimHash): image and text codes of
        # close embeddings agree from the first step; training then lets them diverge.
        self.text_head.load_state_dict(self.image_head.state_dict())

    def encode_image(self, features: Tensor) -> tuple[Tensor, Tensor]:
        dense = self.image_encoder(features)
        if self.concepts is not None:
            dense = self.concepts(dense, "image")
        return dense, self.image_head(dense.detach())

    def encode_text(self, text: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        dense = self.text_encoder(**text)
        if self.concepts is not None:
            dense = self.concepts(dense, "text")
        return dense, self.text_head(dense.detach())

    def forward(self, images: Tensor, text: dict[str, Tensor]) -> Outputs:
        img_dense, img_head = self.encode_image(images)
        txt_dense, txt_head = self.encode_text(text)
        return Outputs(img_dense, txt_dense, img_head, txt_head)

    def encoders(self) -> list[nn.Module]:
        """Everything that makes the dense embedding."""
        return [m for m in (self.image_encoder, self.text_encoder, self.concepts) if m]

    def freeze_encoders(self) -> None:
        """Train only the heads: encoders take no gradient and stay in eval mode."""
        self.encoders_frozen = True
        for m in self.encoders():
            m.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> MeetNet:
        super().train(mode)
        if self.encoders_frozen:
            for m in self.encoders():
                m.eval()
        return self

    def saved_state(self) -> dict[str, Tensor]:
        """The weights a checkpoint stores: all but a frozen transformer (its path is stored)."""
        frozen = isinstance(self.text_encoder, BertTextEncoder) and not self.text_encoder.finetune
        return {
            k: v
            for k, v in self.state_dict().items()
            if not (frozen and k.startswith(TRANSFORMER_PREFIX))
        }


def build_net(config: ModelConfig, vocab: Vocabulary | None = None) -> MeetNet:
    """A fresh network for `config` (a BERT-family model is read from config.text_model)."""
    c = config
    # With CODER's concept branch the encoders produce the instance part of the dense vector.
    embed = c.coder.instance_dim if c.coder else c.embed_dim
    pool = (c.attn_dim, c.pool_heads, c.dropout, c.feature_dropout, c.mlp)
    image = ImageEncoder(config.feature_dim, embed, *pool)
    if config.text_encoder == "bigru":
        if vocab is None:
            raise ValueError("the BiGRU text encoder needs a vocabulary")
        text: nn.Module = BiGRUTextEncoder(vocab, c.word_dim, embed, *pool, config.max_text_len)
    else:
        # Frozen: read on first use (cached token states and image queries never need it).
        if config.text_finetune:
            transformer, tokenizer = load_transformer(config.text_model)
        else:
            transformer, tokenizer = LazyTransformer(config.text_model), None
        text = BertTextEncoder(
            transformer,
            tokenizer,
            embed,
            *pool,
            config.max_text_len,
            config.text_finetune,
        )
    concepts = ConceptFusion.build(config.coder) if config.coder else None
    return MeetNet(image, text, config.embed_dim, config.H, concepts)
