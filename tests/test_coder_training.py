"""CODER through the shared trainer on the small real demo set: train, save, load, serve, resume,
and MEET heads on a CODER encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from meet_milvus.config import Settings
from meet_milvus.errors import MeetError
from meet_milvus.model import load_checkpoint
from meet_milvus_training.coder.config import CoderConfig
from meet_milvus_training.config import TrainConfig
from meet_milvus_training.trainer import train

pytestmark = pytest.mark.integration

SMALL = dict(
    data_name="demo", embed_size=32, batch_size=32, kmeans_iters=3, K=4, seed=0, num_epochs=2
)
CODER = CoderConfig(
    queue_size=64,
    n_concepts=40,
    concept_min_count=2,
    concept_dim=16,
    n_clusters=4,
    cluster_refresh=5,
)


def settings_for(demo_data) -> Settings:
    data_dir = Path(getattr(demo_data, "data_dir", demo_data))
    cache = getattr(demo_data, "cache_dir", data_dir / "cache")
    return Settings(data_dir=data_dir, cache_dir=cache, device="cpu")


@pytest.fixture(scope="module")
def coder_run(demo_data, tmp_path_factory):
    config = TrainConfig(objective="coder", coder=CODER, **SMALL)
    out = tmp_path_factory.mktemp("coder") / "run"
    logs: list[str] = []
    result = train(config, settings_for(demo_data), output=out, progress=False, log=logs.append)
    return result, out, logs


def test_coder_checkpoint_serves_the_fused_embedding(coder_run, demo_data):
    result, out, _ = coder_run
    model = load_checkpoint(out, device="cpu")
    cfg = model.config
    assert cfg.train["objective"] == "coder" and cfg.coder is not None
    assert cfg.embed_dim == SMALL["embed_size"] + CODER.concept_dim
    assert 2 <= len(cfg.coder.concepts) <= CODER.n_concepts
    captions = ["a red apple", "two cows to the left of a tree"]
    texts = model.encode_texts(captions)
    assert texts.dense.shape == (2, cfg.embed_dim)
    assert np.allclose(np.linalg.norm(texts.dense, axis=1), 1.0, atol=1e-5)
    # dot of the served vectors == (1-w) * instance similarity + w * concept similarity
    fusion = model.net.concepts
    with torch.no_grad():
        inst, conc = fusion.split(torch.from_numpy(texts.dense))
    w = cfg.coder.fusion_weight
    expected = (1 - w) * (inst @ inst.T) + w * (conc @ conc.T)
    assert np.allclose(texts.dense @ texts.dense.T, expected.numpy(), atol=1e-5)
    assert texts.hash_codes.shape == (2, cfg.H // 8) and texts.pq_codes.shape == (2, cfg.M)
    assert result.test is not None and result.test["dense"].rsum > 0


def test_coder_run_logs_its_parts_and_resumes(coder_run, demo_data):
    result, out, logs = coder_run
    parts = result.history[0].loss
    assert {"instance", "concept", "cluster"} <= set(parts)
    state = load_file(str(out / "last" / "objective.safetensors"))
    assert any(k.startswith("criterion.instance.queues.image") for k in state)
    assert any(k.startswith("momentum.image.target") for k in state)
    assert not any("transformer" in k for k in state)  # the frozen body is not stored twice
    config = TrainConfig(objective="coder", coder=CODER, **{**SMALL, "num_epochs": 3})
    resumed = train(config, settings_for(demo_data), resume=out, progress=False, log=lambda m: None)
    assert [h.epoch for h in resumed.history] == [1, 2, 3]


def test_meet_heads_on_a_coder_encoder_keep_the_encoder(coder_run, demo_data, tmp_path):
    _, coder_out, _ = coder_run
    config = TrainConfig(objective="meet", init_from=str(coder_out), **{**SMALL, "num_epochs": 1})
    result = train(
        config,
        settings_for(demo_data),
        output=tmp_path / "heads",
        progress=False,
        log=lambda m: None,
    )
    base, heads = load_checkpoint(coder_out, "cpu"), load_checkpoint(result.checkpoint, "cpu")
    assert heads.config.coder == base.config.coder and heads.config.train["objective"] == "meet"
    captions = ["a red apple", "a cow"]
    # Frozen encoders: the dense space is exactly CODER's, the heads are new.
    assert np.array_equal(heads.encode_texts(captions).dense, base.encode_texts(captions).dense)
    assert not np.array_equal(heads.encode_texts(captions).head, base.encode_texts(captions).head)


def test_bad_coder_input_is_one_line(demo_data, tmp_path):
    s = settings_for(demo_data)
    with pytest.raises(MeetError, match="nope: no such directory"):
        train(
            TrainConfig(init_from=str(tmp_path / "nope"), **SMALL),
            s,
            output=tmp_path / "x",
            progress=False,
            log=lambda m: None,
        )
    few = CODER.model_copy(update={"concept_min_count": 10**6})
    with pytest.raises(MeetError, match="concept words"):
        train(
            TrainConfig(objective="coder", coder=few, **SMALL),
            s,
            output=tmp_path / "y",
            progress=False,
            log=lambda m: None,
        )
