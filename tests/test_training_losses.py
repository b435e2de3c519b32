"""Loss terms, negative filtering and hardness weighting on hand-made tensors."""

import numpy as np
import pytest
import torch

from meet_milvus_loaders.precomp import Split
from meet_milvus_training.data import PairIndex
from meet_milvus_training.losses import QuantizationLoss, RankingLoss, SimilarityPreservationLoss
from meet_milvus_training.miners import NegativeFilter, PairInfo, base_negatives
from meet_milvus_training.weighting import HardnessWeighting

pytestmark = pytest.mark.unit

# Rows: images, columns: captions, positives on the diagonal. With margin 0.2 the hinge costs
# are, for image anchors (rows): row0 [., 0, .1], row1 [0, ., 0], row2 [.15, .4, .];
# for caption anchors (columns): col0 [., 0, 0], col1 [0, ., .1], col2 [.6, 0, .].
S = torch.tensor([[0.9, 0.5, 0.8], [0.3, 0.7, 0.2], [0.35, 0.6, 0.4]])
ALL = ~torch.eye(3, dtype=torch.bool)


def test_max_violation_takes_the_hardest_negative_per_anchor():
    loss = RankingLoss(margin=0.2, max_violation=True)(S, ALL, ALL)
    assert loss.item() == pytest.approx((0.1 + 0 + 0.4) + (0 + 0.1 + 0.6))


def test_sum_adds_every_violation():
    loss = RankingLoss(margin=0.2, max_violation=False)(S, ALL, ALL)
    assert loss.item() == pytest.approx((0.1 + 0.15 + 0.4) + (0.1 + 0.6))


def test_filtered_negatives_contribute_nothing():
    keep = ALL.clone()
    keep[2, 1] = False  # the pair (image 2, caption 1) is no negative in either direction
    for max_violation, expected in ((True, 0.1 + 0.15 + 0.6), (False, 0.1 + 0.15 + 0.6)):
        sims = S.clone().requires_grad_(True)
        loss = RankingLoss(0.2, max_violation)(sims, keep, keep)
        assert loss.item() == pytest.approx(expected)
        loss.backward()
        assert sims.grad[2, 1] == 0
    # Without the filter that pair drives both directions' losses.
    sims = S.clone().requires_grad_(True)
    RankingLoss(0.2, True)(sims, ALL, ALL).backward()
    assert sims.grad[2, 1] > 0


def test_weights_are_a_softmax_over_kept_negatives():
    keep = ALL.clone()
    keep[0, 2] = False
    w = HardnessWeighting(temperature=0.1)(S, keep, dim=1)
    assert torch.all(w[~keep] == 0)
    # Row 0 keeps only caption 1: all its weight. Rows 1 and 2 sum to one.
    assert w[0].tolist() == pytest.approx([0, 1, 0])
    assert w.sum(1).tolist() == pytest.approx([1, 1, 1])
    # Harder (more similar) negatives weigh more: row 2 prefers caption 1 (0.6) to caption 0.
    assert w[2, 1] > w[2, 0]
    assert (w[2, 1] / w[2, 0]).item() == pytest.approx(np.exp((0.6 - 0.35) / 0.1), rel=1e-4)
    # Column-wise for caption anchors.
    assert HardnessWeighting(0.1)(S, ALL, dim=0).sum(0).tolist() == pytest.approx([1, 1, 1])


def test_anchor_without_kept_negatives_gets_zero_weights():
    keep = ALL.clone()
    keep[1] = False
    w = HardnessWeighting(0.1)(S, keep, dim=1)
    assert torch.all(w[1] == 0) and not torch.isnan(w).any()


def test_weighting_interpolates_between_max_violation_and_sum():
    rank_max, rank_sum = RankingLoss(0.2, True), RankingLoss(0.2, False)
    hard = HardnessWeighting(1e-4)
    flat = HardnessWeighting(1e6)
    # Very low temperature: the weighted loss is max violation's.
    loss = rank_max(S, ALL, ALL, hard(S, ALL, 1), hard(S, ALL, 0))
    assert loss.item() == pytest.approx(rank_max(S, ALL, ALL).item(), abs=1e-5)
    # Very high temperature in sum mode: weights average one, the plain sum.
    loss = rank_sum(S, ALL, ALL, flat(S, ALL, 1), flat(S, ALL, 0))
    assert loss.item() == pytest.approx(rank_sum(S, ALL, ALL).item(), abs=1e-5)
    # In between, a soft maximum: between the mean and the max of each anchor's costs.
    mid = HardnessWeighting(0.1)
    loss = rank_max(S, ALL, ALL, mid(S, ALL, 1), mid(S, ALL, 0)).item()
    assert rank_sum(S, ALL, ALL).item() / 2 < loss < rank_max(S, ALL, ALL).item()


def _pairs(image_ids, same_text=None, same_source=None):
    b = len(image_ids)
    none = torch.zeros(b, b, dtype=torch.bool)
    return PairInfo(
        image_ids=torch.tensor(image_ids),
        same_text=none if same_text is None else same_text,
        same_source=none if same_source is None else same_source,
    )


def test_same_image_is_never_a_negative():
    keep = base_negatives(torch.tensor([0, 1, 0]))
    assert keep.tolist() == [[False, True, False], [True, False, True], [False, True, False]]
    off = NegativeFilter(same_text=False, same_source=False, margin=None)
    keep_i2t, keep_t2i = off(S, _pairs([0, 1, 0]))
    assert torch.equal(keep_i2t, keep) and torch.equal(keep_t2i, keep)


def test_filter_drops_same_text_same_source_and_too_similar_pairs():
    same_text = torch.zeros(3, 3, dtype=torch.bool)
    same_text[0, 1] = True
    same_source = torch.zeros(3, 3, dtype=torch.bool)
    same_source[1, 2] = same_source[2, 1] = True
    pairs = _pairs([0, 1, 2], same_text, same_source)
    keep_i2t, keep_t2i = NegativeFilter(margin=None)(S, pairs)
    expected = ALL & ~same_text & ~same_source
    assert torch.equal(keep_i2t, expected) and torch.equal(keep_t2i, expected)
    # Similarity criterion: caption 1 scores 0.6 for image 2, above its positive 0.4 by 0.2;
    # image 0 scores 0.8 for caption 2, above caption 2's positive 0.4 by 0.4.
    keep_i2t, keep_t2i = NegativeFilter(False, False, margin=0.1)(S, _pairs([0, 1, 2]))
    assert not keep_i2t[2, 1] and keep_i2t[2, 0]
    assert not keep_t2i[0, 2] and keep_t2i[1, 2]
    assert keep_i2t.sum() == 5 and keep_t2i.sum() == 5


def test_pair_index_knows_shared_texts_and_sources():
    split = Split(
        name="t",
        split="train",
        images=np.zeros((3, 4), np.float32),
        captions=["A red car.", "a dog", "a  RED car", "a cat", "a bird", "a fish"],
        caption_image=np.array([0, 0, 1, 1, 2, 2]),
        image_paths=["/x/a.png", "/x/b.png", "/x/a.png"],
    )
    pairs = PairIndex(split).pairs(np.array([0, 2, 3, 4]))
    assert pairs.image_ids.tolist() == [0, 1, 1, 2]
    # Caption 2 ("a  RED car", image 1) has the same text as caption 0 (image 0): the pair
    # (image 0, caption 2) and (image 1, caption 0) are both described by the same text.
    assert pairs.same_text[0, 1] and pairs.same_text[1, 0]
    assert not pairs.same_text[0, 2] and not pairs.same_text[3, 0]
    # Images 0 and 2 share a source file.
    assert pairs.same_source[0, 3] and pairs.same_source[3, 0] and not pairs.same_source[0, 1]


def test_similarity_preservation_is_zero_when_structures_agree():
    torch.manual_seed(0)
    img = torch.tanh(torch.randn(4, 8))
    txt = torch.tanh(torch.randn(4, 8))
    cos = torch.nn.functional.normalize(img, dim=1) @ torch.nn.functional.normalize(txt, dim=1).T
    dense = cos.clone().requires_grad_(True)
    h_img = img.clone().requires_grad_(True)
    lf = SimilarityPreservationLoss()
    assert lf(h_img, txt, dense).item() == pytest.approx(0, abs=1e-7)
    # Scale-free: shrinking the head outputs changes nothing.
    assert lf(0.01 * h_img, txt, dense).item() == pytest.approx(0, abs=1e-7)
    loss = lf(h_img, txt, dense + 0.1)
    assert loss.item() == pytest.approx(4 * 0.01, rel=1e-5)  # 4 anchors, mean square 0.01
    loss.backward()
    assert dense.grad is None and h_img.grad.abs().sum() > 0  # the dense space is the target


def test_quantization_loss_parts():
    lq = QuantizationLoss()
    signs = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert lq(signs, signs).item() == 0
    head = torch.tensor([[0.5, -0.5]])
    # To the reconstruction (0.5, 0.5): mean (0 + 1) / 2; to the sign (1, -1): mean (.25 + .25) / 2.
    assert lq(head, torch.tensor([[0.5, 0.5]])).item() == pytest.approx(0.5 + 0.25)
