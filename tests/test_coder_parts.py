"""CODER's pieces on hand-made tensors: queue masking, EMA, weighting, loss, clustering, fusion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from meet_milvus.model.fusion import fuse, fused_similarity
from meet_milvus_training.coder import (
    DiversityContrastiveLoss,
    EmbeddingQueue,
    MomentumEncoder,
    OnlineClusterer,
    diversity_weights,
    ema_update,
    momentum_copy,
    sinkhorn,
    spherical_kmeans,
)

pytestmark = pytest.mark.unit


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ---- momentum encoders -------------------------------------------------------------------------


def test_ema_update_moves_target_by_the_momentum_rule():
    online = nn.Linear(3, 2)
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    before = target.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    ema_update(target, online, momentum=0.9)
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * online.weight)
    ema_update(target, online, momentum=0.0)
    assert torch.equal(target.weight, online.weight)


def test_ema_update_skips_frozen_params_and_copies_buffers():
    online = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    target = momentum_copy(online)
    with torch.no_grad():
        online[0].weight.fill_(5.0)
        online[1].running_mean.fill_(3.0)
    online[0].weight.requires_grad_(False)
    frozen_before = target[0].weight.clone()
    ema_update(target, online, 0.5)
    assert torch.equal(target[0].weight, frozen_before)
    assert torch.equal(target[1].running_mean, online[1].running_mean)


def test_momentum_encoder_stays_in_eval_and_gives_no_grad():
    online = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    enc = MomentumEncoder(online, momentum=0.99)
    enc.train()
    assert not enc.target.training
    x = torch.ones(2, 4, requires_grad=True)
    y = enc(x)
    assert not y.requires_grad
    assert torch.equal(y, enc(x))  # no dropout: keys are deterministic


def test_ema_rejects_bad_momentum():
    with pytest.raises(ValueError, match="momentum"):
        ema_update(nn.Linear(1, 1), nn.Linear(1, 1), 1.5)


# ---- queue ---------------------------------------------------------------------------------------


def test_queue_is_a_ring_buffer():
    q = EmbeddingQueue(size=4, dim=2)
    assert len(q) == 0
    q.enqueue(torch.ones(3, 2), torch.tensor([0, 1, 2]), torch.tensor([10, 11, 12]))
    assert len(q) == 3
    q.enqueue(2 * torch.ones(2, 2), torch.tensor([3, 4]), torch.tensor([13, 14]))
    # The fifth entry overwrote the oldest (slot 0); the pointer wrapped to 1.
    assert q.image_ids.tolist() == [4, 1, 2, 3]
    assert q.embeddings[0].tolist() == [2.0, 2.0]
    assert int(q.pointer) == 1
    # A batch larger than the queue keeps its newest rows.
    q.enqueue(torch.arange(12.0).view(6, 2), torch.arange(6), torch.arange(6))
    assert sorted(q.image_ids.tolist()) == [2, 3, 4, 5]


def test_queue_mask_removes_same_image_and_same_caption_entries():
    q = EmbeddingQueue(size=6, dim=2)
    q.enqueue(
        torch.randn(5, 2),
        image_ids=torch.tensor([7, 7, 8, 9, 10]),
        caption_ids=torch.tensor([70, 71, 80, 90, 55]),
    )
    # Query 0: image 7, caption 55 (a caption text that image 10 also carries).
    # Query 1: image 9, caption 91.
    mask = q.negative_mask(torch.tensor([7, 9]), torch.tensor([55, 91]))
    assert mask.tolist() == [
        [False, False, True, True, False, False],  # 7, 7 same image; 10 same caption; slot 5 empty
        [True, True, True, False, True, False],  # 9 same image
    ]


# ---- diversity-sensitive weighting -----------------------------------------------------------


def test_weights_average_to_one_over_valid_negatives_and_rank_by_hardness():
    sims = torch.tensor([[0.9, 0.1, 0.5, -0.3], [0.2, 0.2, 0.2, 0.8]])
    mask = torch.tensor([[True, True, True, True], [True, False, True, False]])
    w = diversity_weights(sims, mask, temperature=0.2)
    assert torch.allclose(w[0].mean(), torch.tensor(1.0))
    assert torch.allclose(w[1][mask[1]].mean(), torch.tensor(1.0))
    assert (w[~mask] == 0).all()
    assert w[0].argsort().tolist() == sims[0].argsort().tolist()  # harder -> heavier
    assert torch.allclose(w[1][mask[1]], torch.ones(2))  # equal hardness -> uniform


def test_weights_tend_to_uniform_at_high_temperature_and_survive_empty_rows():
    sims = torch.rand(3, 5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2] = False
    w = diversity_weights(sims, mask, temperature=1e6)
    assert torch.allclose(w[:2], torch.ones(2, 5), atol=1e-4)
    assert torch.isfinite(w).all() and (w[2] == 0).all()


def test_weights_carry_no_gradient():
    sims = torch.rand(2, 3, requires_grad=True)
    assert not diversity_weights(sims, torch.ones(2, 3, dtype=torch.bool)).requires_grad


# ---- contrastive loss ---------------------------------------------------------------------------


def test_uniform_dcl_equals_infonce_cross_entropy():
    q, k = unit(4, 8, seed=1), unit(4, 8, seed=2)
    loss = DiversityContrastiveLoss(temperature=0.1, adaptive=False)
    off_diag = ~torch.eye(4, dtype=torch.bool)
    # Positive + the 3 other keys as negatives is exactly cross-entropy on q @ k.T.
    expected = F.cross_entropy(q @ k.T / 0.1, torch.arange(4))
    assert torch.allclose(loss(q, k, k, off_diag), expected, atol=1e-6)


def test_masked_negatives_do_not_count():
    q, k = unit(2, 8, seed=3), unit(2, 8, seed=4)
    extra = unit(5, 8, seed=5)
    loss = DiversityContrastiveLoss(temperature=0.1, adaptive=True)
    none = torch.zeros(2, 5, dtype=torch.bool)
    # With every negative masked only the positive remains: loss 0, whatever the negatives.
    assert loss(q, k, extra, none).item() == pytest.approx(0.0, abs=1e-6)
    mask = torch.tensor([[True, False, True, False, False]] * 2)
    garbage = extra.clone()
    garbage[[1, 3, 4]] = unit(3, 8, seed=6)
    assert torch.allclose(loss(q, k, extra, mask), loss(q, k, garbage, mask))


def test_adaptive_weighting_raises_the_loss_of_hard_negatives():
    q = unit(1, 8, seed=7)
    pos = q.clone()
    hard = F.normalize(q + 0.3 * unit(1, 8, seed=8), dim=1)
    easy = -q
    negs = torch.cat([hard, easy])
    mask = torch.ones(1, 2, dtype=torch.bool)
    plain = DiversityContrastiveLoss(0.1, adaptive=False)(q, pos, negs, mask)
    adaptive = DiversityContrastiveLoss(0.1, adaptive=True, weight_temperature=0.1)(
        q, pos, negs, mask
    )
    assert adaptive > plain  # the hard negative weighs ~2, the easy one ~0


def test_loss_trains_embeddings_apart():
    torch.manual_seed(0)
    q = nn.Parameter(torch.randn(6, 4))
    k = nn.Parameter(torch.randn(6, 4))
    opt = torch.optim.SGD([q, k], lr=0.5)
    loss_fn = DiversityContrastiveLoss(0.1)
    mask = ~torch.eye(6, dtype=torch.bool)
    first = None
    for _ in range(50):
        qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
        loss = loss_fn(qn, kn, kn, mask)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 2


# ---- clustering ---------------------------------------------------------------------------------


def test_sinkhorn_gives_balanced_assignments():
    # Scores that all favour cluster 0: argmax alone would put the whole batch there.
    scores = torch.rand(64, 4, generator=torch.Generator().manual_seed(0)) * 0.1
    scores[:, 0] += 1.0
    codes = sinkhorn(scores, epsilon=0.05, iterations=50)
    assert torch.allclose(codes.sum(1), torch.ones(64), atol=1e-5)
    assert torch.allclose(codes.sum(0), torch.full((4,), 16.0), atol=0.1)
    assert torch.bincount(codes.argmax(1), minlength=4).min() >= 12


def test_sinkhorn_keeps_a_clear_structure():
    centres = torch.eye(3)
    x = centres.repeat_interleave(5, dim=0)
    codes = sinkhorn(x @ centres.T, epsilon=0.05, iterations=3)
    assert codes.argmax(1).tolist() == [0] * 5 + [1] * 5 + [2] * 5


def test_spherical_kmeans_finds_separated_clusters():
    centres = torch.eye(4, 16)
    x = centres.repeat_interleave(10, dim=0) + 0.05 * torch.randn(40, 16)
    found = spherical_kmeans(x, 4, iterations=10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(found.norm(dim=1), torch.ones(4))
    # Every true centre has a centroid within a small angle.
    assert (centres @ found.T).max(dim=1).values.min() > 0.95


def test_online_clusterer_refreshes_periodically_and_assigns():
    clusterer = OnlineClusterer(n_clusters=4, dim=8, refresh_every=3)
    pool = unit(40, 8, seed=9)
    assert clusterer.refresh(pool[:2]) is False  # too few points to fit 4 clusters
    assert clusterer.refresh(pool)  # first fit happens as soon as possible
    assert [clusterer.refresh(pool) for _ in range(4)] == [False, True, False, False]
    codes = clusterer.assign(unit(8, 8, seed=10), pool)
    assert codes.shape == (8, 4) and torch.allclose(codes.sum(1), torch.ones(8), atol=1e-5)
    with pytest.raises(RuntimeError, match="not fitted"):
        OnlineClusterer(4, 8).assign(pool)


# ---- fusion -------------------------------------------------------------------------------------


def test_fused_embedding_dot_is_the_weighted_similarity():
    ii, ti = unit(5, 6, seed=11), unit(7, 6, seed=12)
    ic, tc = unit(5, 3, seed=13), unit(7, 3, seed=14)
    w = 0.3
    expected = (1 - w) * ii @ ti.T + w * ic @ tc.T
    assert torch.allclose(fused_similarity(ii, ti, ic, tc, w), expected)
    a, b = fuse(ii, ic, w), fuse(ti, tc, w)
    assert a.shape == (5, 9)
    assert torch.allclose(a @ b.T, expected, atol=1e-6)
    assert torch.allclose(a.norm(dim=1), torch.ones(5))  # still unit: cosine = dot


def test_fusion_without_concepts_is_the_instance_embedding():
    ii = unit(2, 4)
    assert fuse(ii, None, 0.3) is ii
    assert fuse(ii, unit(2, 3), 0.0) is ii
    with pytest.raises(ValueError, match="fusion weight"):
        fuse(ii, unit(2, 3), 1.5)
    assert math.isclose(float(fused_similarity(ii, ii, None, None, 0.5)[0, 0]), 1.0, rel_tol=1e-6)


def test_momentum_encoder_shares_frozen_params_and_leaves_them_out_of_its_state():
    online = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    online[0].requires_grad_(False)  # a frozen body, like a frozen transformer
    enc = MomentumEncoder(online, momentum=0.5)
    assert enc.target[0].weight is online[0].weight
    assert enc.target[1].weight is not online[1].weight
    state = nn.ModuleDict({"m": enc}).state_dict()
    assert set(state) == {"m.target.1.weight", "m.target.1.bias"}
    # A fresh copy restores the saved (moved) trainable part and keeps the shared one.
    with torch.no_grad():
        online[1].weight.add_(1.0)
    enc.update(online)
    state = nn.ModuleDict({"m": enc}).state_dict()
    fresh = nn.ModuleDict({"m": MomentumEncoder(online, momentum=0.5)})
    fresh.load_state_dict(state)
    assert torch.equal(fresh["m"].target[1].weight, enc.target[1].weight)
    assert fresh["m"].target[0].weight is online[0].weight
