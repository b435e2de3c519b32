"""CODER's concept side: vocabulary mining, co-occurrence graph, graph network, concept branch,
and the composed criterion on hand-made embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meet_milvus.model.branch import ConceptBranch
from meet_milvus.model.config import ConceptNetConfig
from meet_milvus.model.fusion import ConceptFusion
from meet_milvus.model.graph import ConceptGraphNetwork, normalize_adjacency
from meet_milvus_training.coder import (
    CoderConfig,
    CoderCriterion,
    CoderOutputs,
    cooccurrence_graph,
    mine_concepts,
)
from meet_milvus_training.coder.concepts import concept_occurrence

pytestmark = pytest.mark.unit

CAPTIONS = [
    "A man riding a red bike down the street.",
    "Two men are riding bikes on a busy street.",
    "A dog is sitting on the grass in the park.",
    "The brown dog sits next to a red ball on the grass.",
    "A man and his dog walking in the park.",
    "A red bike is parked next to the street.",
]


def test_mined_concepts_are_content_words_singularised_and_ranked():
    concepts = mine_concepts(CAPTIONS, size=10, min_count=2)
    # Counted per caption: red 3, street 3, bike 3 (bike + bikes), dog 3, man 2, grass 2, park 2.
    assert concepts[:4] == ["bike", "dog", "red", "street"]
    assert set(concepts) == {"bike", "dog", "red", "street", "grass", "man", "park"}
    for word in ("the", "riding", "sitting", "sits", "bikes", "two"):
        assert word not in concepts
    assert mine_concepts(CAPTIONS, size=2, min_count=2) == ["bike", "dog"]


def test_cooccurrence_graph_holds_conditional_probabilities():
    concepts = ["dog", "grass", "park", "bike"]
    probs = cooccurrence_graph(CAPTIONS, concepts)
    # dog in captions 2, 3, 4; grass in 2, 3; park in 2, 4: P(grass|dog) = 2/3, P(dog|grass) = 1.
    assert probs[0, 1] == pytest.approx(2 / 3)
    assert probs[1, 0] == pytest.approx(1.0)
    assert probs[2, 0] == pytest.approx(1.0)
    assert probs[0, 3] == 0.0 and np.all(np.diag(probs) == 0)
    # Grouped by image: captions 0 and 2 are one image, so bike and dog now co-occur.
    by_image = cooccurrence_graph(CAPTIONS, concepts, np.array([0, 1, 0, 2, 3, 4]))
    assert by_image[3, 0] > 0
    assert concept_occurrence(CAPTIONS, concepts).shape == (6, 4)


def test_normalized_adjacency_is_row_stochastic_with_thresholded_edges():
    probs = torch.tensor([[0.0, 0.6, 0.05], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    adj = normalize_adjacency(probs, threshold=0.1, self_weight=0.5)
    assert torch.allclose(adj.sum(1), torch.ones(3))
    assert adj[0, 2] == 0  # below threshold
    assert adj[0].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert adj[2].tolist() == pytest.approx([0.0, 0.0, 1.0])  # isolated: keeps itself


def test_graph_network_shapes_and_propagation():
    adj = normalize_adjacency(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    feats = torch.eye(3, 5)
    net = ConceptGraphNetwork(adj, feats, out_dim=4, hidden_dim=6, layers=2)
    out = net()
    assert out.shape == (3, 4)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    one = ConceptGraphNetwork(adj, feats, out_dim=4, layers=1)
    with torch.no_grad():
        one.layers[0].weight.copy_(torch.eye(4, 5))
    # One layer, identity weights: linked concepts 0 and 1 are averaged, 2 stays alone.
    h = one()
    assert torch.allclose(h[0], h[1]) and not torch.allclose(h[0], h[2])
    with pytest.raises(ValueError, match="number of concepts"):
        ConceptGraphNetwork(adj, torch.eye(4, 5), out_dim=4)


def make_branch() -> ConceptBranch:
    torch.manual_seed(0)
    adj = normalize_adjacency(torch.rand(6, 6))
    graph = ConceptGraphNetwork(adj, torch.randn(6, 10), out_dim=8)
    return ConceptBranch(graph, embed_dim=12, concept_dim=8)


def test_concept_branch_descriptors_and_attention():
    branch = make_branch()
    x = F.normalize(torch.randn(5, 12), dim=1)
    att = branch.attention(x, "image")
    assert att.shape == (5, 6) and torch.allclose(att.sum(1), torch.ones(5))
    img, txt = branch(x, "image"), branch(x, "text")
    assert img.shape == txt.shape == (5, 8)
    assert torch.allclose(img.norm(dim=1), torch.ones(5), atol=1e-5)
    assert not torch.allclose(img, txt)  # each modality has its own query
    (img.sum() + txt.sum()).backward()
    assert branch.graph.features.grad is not None  # gradients reach the concept nodes


def test_concept_fusion_serves_the_fused_embedding_and_splits_it_back():
    fusion = ConceptFusion(make_branch(), instance_dim=12, weight=0.3)
    x = F.normalize(torch.randn(4, 12), dim=1)
    fused = fusion(x, "text")
    assert fused.shape == (4, fusion.dense_dim) == (4, 20)
    assert torch.allclose(fused.norm(dim=1), torch.ones(4), atol=1e-5)
    inst, conc = fusion.split(fused)
    assert torch.allclose(inst, x, atol=1e-6)
    assert torch.allclose(conc, fusion.branch(x, "text"), atol=1e-6)
    with pytest.raises(ValueError, match="0 < fusion weight < 1"):
        ConceptFusion(make_branch(), 12, 0.0)


def test_concept_fusion_built_from_its_config_loads_trained_weights():
    cfg = ConceptNetConfig(
        instance_dim=12,
        concepts=[f"c{i}" for i in range(6)],
        node_dim=10,
        concept_dim=8,
        fusion_weight=0.3,
    )
    trained = ConceptFusion(make_branch(), 12, 0.3)
    rebuilt = ConceptFusion.build(cfg)
    rebuilt.load_state_dict(trained.state_dict())
    x = F.normalize(torch.randn(3, 12), dim=1)
    assert torch.equal(rebuilt(x, "image"), trained(x, "image"))


def outputs(cfg: CoderConfig, b: int = 8, d: int = 12, seed: int = 0) -> CoderOutputs:
    g = torch.Generator().manual_seed(seed)

    def u(n: int, dim: int) -> torch.Tensor:
        return F.normalize(torch.randn(n, dim, generator=g), dim=1).requires_grad_()

    ids = torch.arange(b) + seed * b
    out = CoderOutputs(image=u(b, d), text=u(b, d), image_ids=ids // 2, caption_ids=ids)
    if cfg.momentum_queue:
        out.image_key, out.text_key = out.image.detach(), out.text.detach()
    if cfg.concept_branch:
        out.image_concept, out.text_concept = u(b, cfg.concept_dim), u(b, cfg.concept_dim)
        if cfg.momentum_queue:
            out.image_concept_key = out.image_concept.detach()
            out.text_concept_key = out.text_concept.detach()
    if cfg.uses_clustering:
        out.image_cluster = torch.randn(b, cfg.n_clusters, generator=g).requires_grad_()
        out.text_cluster = torch.randn(b, cfg.n_clusters, generator=g).requires_grad_()
    return out


@pytest.mark.parametrize(
    "switch",
    [
        {},
        {"momentum_queue": False},
        {"adaptive_weighting": False},
        {"concept_branch": False},
        {"cluster_loss": False},
    ],
)
def test_criterion_parts_follow_the_switches(switch):
    cfg = CoderConfig(queue_size=16, concept_dim=6, n_clusters=4, cluster_refresh=2, **switch)
    crit = CoderCriterion(cfg, embed_dim=12).train()
    for step in range(3):
        out = outputs(cfg, seed=step)
        loss, parts = crit(out)
        loss.backward()
        assert torch.isfinite(loss) and out.image.grad is not None
    assert ("concept" in parts) == cfg.concept_branch
    assert ("cluster" in parts) == cfg.uses_clustering
    if cfg.momentum_queue:
        assert len(crit.instance.queues["image"]) == 16  # 3 batches of 8 through a queue of 16
    else:
        assert crit.instance.queues is None


def test_criterion_masks_in_batch_pairs_of_the_same_image():
    cfg = CoderConfig(momentum_queue=False, concept_branch=False, adaptive_weighting=False)
    crit = CoderCriterion(cfg, embed_dim=4)
    e = torch.eye(4)
    # Pairs 0 and 1 are two captions of image 0 with the same embedding: not each other's
    # negatives, so the loss equals the loss of the two-pair problem without the duplicate.
    image = torch.stack([e[0], e[0], e[1]])
    text = torch.stack([e[0], e[0], e[1]])
    out = CoderOutputs(image, text, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2]))
    ref = CoderOutputs(image[1:], text[1:], torch.tensor([0, 1]), torch.tensor([1, 2]))
    assert torch.allclose(crit(out)[0], crit(ref)[0])


def test_criterion_needs_the_inputs_its_parts_use():
    cfg = CoderConfig(queue_size=8, concept_dim=6, n_clusters=4)
    crit = CoderCriterion(cfg, embed_dim=12).train()
    out = outputs(cfg)
    out.image_concept = None
    with pytest.raises(ValueError, match="concept descriptors"):
        crit(out)
    out = outputs(cfg)
    out.image_key = None
    with pytest.raises(ValueError, match="momentum"):
        crit(out)
