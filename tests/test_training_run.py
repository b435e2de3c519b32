"""Tiny real training runs on the demo data: checkpoint contract, determinism, resume, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from meet_milvus.config import load_settings
from meet_milvus.errors import CheckpointError, MeetError
from meet_milvus.model import Encoded, MeetModel, ModelConfig, load_checkpoint
from meet_milvus.model.quantization import ProductQuantizer
from meet_milvus_loaders.precomp import Split, load_split, write_split
from meet_milvus_training.cli import main
from meet_milvus_training.config import TrainConfig
from meet_milvus_training.trainer import train

pytestmark = pytest.mark.integration

# Small and fast: the contract's code sizes with a narrow joint space and few k-means steps.
TINY = dict(embed_size=64, attn_dim=32, pool_heads=2, batch_size=32, kmeans_iters=3, num_epochs=2)


def _data_dir(demo_data) -> Path:
    return Path(getattr(demo_data, "data_dir", demo_data))


@pytest.fixture(scope="module")
def settings(demo_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_settings(None, data_dir=_data_dir(demo_data), cache_dir=cache, device="cpu")


@pytest.fixture(scope="module")
def trained(settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ckpt"
    return train(TrainConfig(**TINY), settings, output=out, progress=False, log=lambda _: None)


@pytest.fixture(scope="module")
def model(trained) -> MeetModel:
    return load_checkpoint(trained.checkpoint, device="cpu")


@pytest.fixture(scope="module")
def dev(settings) -> Split:
    return load_split(settings.data_dir, "demo", "dev")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {
        **load_file(str(path / "model.safetensors")),
        **load_file(str(path / "codebooks.safetensors")),
    }


def _same(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_run_writes_best_and_last_checkpoints_with_logs(trained, model):
    out = trained.checkpoint
    assert [h.epoch for h in trained.history] == [1, 2]
    # The best epoch is the first with the highest dev rSum sum (select="sum"), and the
    # checkpoint written is that epoch's.
    best = max(trained.history, key=lambda h: h.dev["sum"])
    assert trained.best_epoch == best.epoch and trained.best == best.dev
    assert [h.best for h in trained.history] == [True, trained.best_epoch == 2]
    assert model.config.epoch == best.epoch and model.config.scores == best.dev
    for d in (out, out / "last"):
        for f in ("config.json", "model.safetensors", "codebooks.safetensors"):
            assert (d / f).is_file()
    assert (out / "last" / "trainer.json").is_file()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert len(json.loads((out / "history.json").read_text())) == 2
    for h in trained.history:
        assert set(h.dev) == {"dense", "hash", "pq", "sum"}
        assert h.dev["sum"] == pytest.approx(h.dev["dense"] + h.dev["hash"] + h.dev["pq"])
        assert h.samples_per_s > 0
        assert {"rank_dense", "rank_hash", "lf", "lq"} <= set(h.loss)
    # The test split of the best checkpoint was evaluated after training.
    assert set(trained.test) == {"dense", "hash", "pq"}
    config = json.loads((out / "config.json").read_text())
    assert config["format_version"] == 2 and config["train"]["margin"] == 0.2
    # The network's shape is the model's own (format 2), copied from the run's config.
    assert (config["attn_dim"], config["pool_heads"]) == (TINY["attn_dim"], TINY["pool_heads"])


def test_a_format_1_checkpoint_still_loads(trained, model, dev, tmp_path):
    """Before the model config was split from the training config, config.json kept the
    network's shape inside `train` (format 1): such a checkpoint loads and encodes the same."""
    old = tmp_path / "format1"
    shutil.copytree(trained.checkpoint, old, ignore=shutil.ignore_patterns("last", "tb"))
    config = json.loads((old / "config.json").read_text())
    shape = ("word_dim", "attn_dim", "pool_heads", "dropout", "feature_dropout", "mlp")
    assert all(config["train"][k] == config.pop(k) for k in shape)
    (old / "config.json").write_text(json.dumps({**config, "format_version": 1}))
    again = load_checkpoint(old, device="cpu")
    assert again.config.format_version == 2 and again.config.attn_dim == TINY["attn_dim"]
    assert again.config.fingerprint == model.config.fingerprint
    a, b = model.encode_texts(dev.captions[:3]), again.encode_texts(dev.captions[:3])
    assert np.array_equal(a.dense, b.dense) and np.array_equal(a.pq_codes, b.pq_codes)
    (old / "config.json").write_text(json.dumps({**config, "format_version": 9}))
    with pytest.raises(CheckpointError, match="format version 9, this meet-milvus reads 1, 2"):
        load_checkpoint(old, device="cpu")


def test_frozen_text_model_is_referenced_not_copied(model, trained):
    cfg = model.config
    assert isinstance(cfg, ModelConfig)
    assert cfg.text_encoder == "bert" and not cfg.text_finetune
    assert Path(cfg.text_model).is_dir() and len(cfg.text_model_sha) == 64
    keys = load_file(str(trained.checkpoint / "model.safetensors")).keys()
    assert not any(k.startswith("text_encoder.transformer.") for k in keys)


def test_encoded_batches_follow_the_contract(model, dev):
    cfg = model.config
    assert (cfg.H, cfg.M, cfg.K, cfg.feature_dim) == (64, 8, 8, 1280)
    images = model.encode_images(dev.images[:5], batch_size=2)
    texts = model.encode_texts(dev.captions[:7], batch_size=3)
    for enc, n, modality in ((images, 5, "image"), (texts, 7, "text")):
        assert isinstance(enc, Encoded) and len(enc) == n
        assert enc.dense.shape == (n, cfg.embed_dim) and enc.dense.dtype == np.float32
        assert np.allclose(np.linalg.norm(enc.dense, axis=1), 1, atol=1e-5)
        assert enc.head.shape == (n, 64) and enc.head.dtype == np.float32
        assert np.all(np.abs(enc.head) < 1)
        assert enc.hash_codes.dtype == np.uint8 and enc.hash_codes.shape == (n, 8)
        assert np.array_equal(enc.hash_codes, np.packbits(enc.head >= 0, axis=1))
        assert enc.pq_codes.dtype == np.uint8 and enc.pq_codes.shape == (n, 8)
        # Each PQ code is the nearest codeword of its sub-space.
        parts = enc.head.reshape(n, 8, 8)
        dist = ((parts[:, :, None, :] - model.codebooks[None]) ** 2).sum(-1)
        assert np.array_equal(enc.pq_codes, dist.argmin(-1))
        rec = model.pq_reconstruct(enc.pq_codes, modality)
        assert rec.shape == (n, 64) and rec.dtype == np.float32
    assert model.codebooks.shape == (8, 256, 8) and model.codebooks.dtype == np.float32
    # Batch size does not change the result; (N, D) pooled features are accepted too.
    again = model.encode_images(dev.images[:5], batch_size=5)
    assert np.allclose(again.dense, images.dense, atol=1e-5)
    pooled = model.encode_images(dev.images[:2].astype(np.float32).mean(1))
    assert pooled.dense.shape == (2, cfg.embed_dim)
    assert len(model.encode_texts([])) == 0


def test_fingerprint_is_stable_across_reloads(model, trained, dev):
    again = load_checkpoint(trained.checkpoint, device="cpu")
    assert again.config.fingerprint == model.config.fingerprint
    assert len(model.config.fingerprint) == 16
    a = model.encode_texts(dev.captions[:4])
    b = again.encode_texts(dev.captions[:4])
    assert np.array_equal(a.dense, b.dense) and np.array_equal(a.pq_codes, b.pq_codes)
    last = load_checkpoint(trained.checkpoint / "last", device="cpu")  # epoch 2's
    same = last.config.fingerprint == model.config.fingerprint
    assert same == (trained.best_epoch == 2)


def test_raw_image_files_encode_like_their_features(model, dev):
    if not dev.image_paths:
        pytest.skip("the demo split names no image files")
    files = model.encode_image_files(dev.image_paths[:3])
    feats = model.encode_images(dev.images[:3])
    # The split stores the same extractor's features in float16.
    assert np.all((files.dense * feats.dense).sum(1) > 0.99)


def test_cached_token_states_encode_like_the_live_transformer(trained, settings, dev):
    from meet_milvus.model.checkpoint import load_network
    from meet_milvus_training.text_cache import TokenStateCache

    net, quantizer, config = load_network(trained.checkpoint)
    cache = TokenStateCache.build(
        net.text_encoder,
        dev.captions[:6],
        settings.cache_dir,
        config.text_model_sha,
        progress=False,
    )
    live = MeetModel(net, quantizer, config, "cpu").encode_texts(dev.captions[:6])
    cached = MeetModel(net, quantizer, config, "cpu", text_batcher=cache.lookup)
    assert np.allclose(cached.encode_texts(dev.captions[:6]).dense, live.dense, atol=1e-5)


def test_cpu_training_is_deterministic_and_resume_is_exact(trained, settings, tmp_path):
    one = TrainConfig(**{**TINY, "num_epochs": 1})
    quiet = dict(progress=False, log=lambda _: None)
    a = train(one, settings, output=tmp_path / "a", **quiet)
    # The second run goes through the CLI.
    args = [f"--{k}={v}" for k, v in TINY.items() if k != "num_epochs"]
    main(
        [*args, "--num_epochs=1", f"--data-dir={settings.data_dir}",
         f"--cache-dir={settings.cache_dir}", f"--output={tmp_path / 'b'}", "--quiet"]
    )  # fmt: skip
    assert _same(a.checkpoint / "last", tmp_path / "b" / "last")
    other = train(one.model_copy(update={"seed": 1}), settings, output=tmp_path / "c", **quiet)
    assert not _same(a.checkpoint / "last", other.checkpoint / "last")
    # Resuming the 1-epoch run to 2 epochs gives exactly the uninterrupted 2-epoch run.
    resumed = train(TrainConfig(**TINY), settings, resume=a.checkpoint, **quiet)
    assert resumed.checkpoint == a.checkpoint
    assert [h.epoch for h in resumed.history] == [1, 2]
    assert _same(a.checkpoint / "last", trained.checkpoint / "last")


def test_bad_input_is_one_clear_error(model, trained, tmp_path):
    with pytest.raises(MeetError, match="dim 2048.*expects 1280"):
        model.encode_images(np.zeros((2, 49, 2048), np.float32))
    with pytest.raises(MeetError, match="caption 1: empty"):
        model.encode_texts(["a cat", "   "])
    with pytest.raises(MeetError, match="PQ codes of shape"):
        model.pq_reconstruct(np.zeros((2, 3), np.uint8), "image")
    with pytest.raises(MeetError, match="no such directory"):
        load_checkpoint(tmp_path / "nowhere")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained.checkpoint, ckpt, ignore=shutil.ignore_patterns("last", "tb"))
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(MeetError, match="format version 99"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").write_text(json.dumps({**config, "fingerprint": "0" * 16}))
    with pytest.raises(MeetError, match="fingerprint"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(MeetError, match="model.safetensors missing"):
        load_checkpoint(ckpt)


def _run_cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return exit_.value.code, capsys.readouterr().err.strip()


def test_cli_user_errors_are_one_line_with_exit_2(capsys, settings, tmp_path):
    code, err = _run_cli(capsys, "--H", "12", f"--data-dir={settings.data_dir}")
    assert code == 2 and err.startswith("error: H=12 must be a multiple of 8") and "\n" not in err
    code, err = _run_cli(capsys, "--margin", "x", f"--data-dir={settings.data_dir}")
    assert code == 2 and err.startswith("error:") and "margin" in err and "\n" not in err
    code, err = _run_cli(capsys, "--num_epochs", "0", f"--data-dir={settings.data_dir}")
    assert code == 2 and err.startswith("error: --num_epochs") and "\n" not in err
    code, err = _run_cli(capsys, "--nope")
    assert code == 2 and err.startswith("error:") and "\n" not in err
    code, err = _run_cli(capsys, "--data_name", "nothing", f"--data-dir={tmp_path}")
    assert code == 2 and "nothing" in err and "\n" not in err
    code, err = _run_cli(capsys, "--resume", str(tmp_path), f"--data-dir={tmp_path}")
    assert code == 2 and "resume" in err and "\n" not in err
    code, err = _run_cli(capsys, "--objective", "nope", f"--data-dir={settings.data_dir}")
    assert code == 2 and "objective" in err and "\n" not in err


def test_training_refuses_mismatched_or_empty_splits(settings, tmp_path, capsys):
    train_split = load_split(settings.data_dir, "demo", "train")
    write_split(tmp_path, Split("odd", "train", train_split.images[:10], train_split.captions[:50],
                                train_split.caption_image[:50]))  # fmt: skip
    write_split(tmp_path, Split("odd", "dev", np.zeros((4, 49, 64), np.float16),
                                ["a cat"] * 4, np.arange(4)))  # fmt: skip
    code, err = _run_cli(capsys, "--data_name", "odd", f"--data-dir={tmp_path}")
    assert code == 2 and "dev features have dim 64" in err
    root = tmp_path / "empty_precomp"
    root.mkdir()
    np.save(root / "train_ims.npy", np.zeros((0, 49, 1280), np.float16))
    (root / "train_caps.txt").write_text("")
    code, err = _run_cli(capsys, "--data_name", "empty", f"--data-dir={tmp_path}")
    assert code == 2 and "train" in err and "\n" not in err


def test_pq_of_a_checkpoint_scores_like_reconstruction(model, dev):
    q = model.encode_texts(dev.captions[:3])
    g = model.encode_images(dev.images[:6])
    pq = ProductQuantizer(64, 8, 8, torch.from_numpy(model.codebooks))
    adc = pq.adc(torch.from_numpy(q.head), torch.from_numpy(g.pq_codes.astype(np.int64)))
    assert np.allclose(
        adc.numpy(), q.head @ model.pq_reconstruct(g.pq_codes, "image").T, atol=1e-5
    )


def test_patience_stops_on_dev_and_keeps_the_best_epoch(settings, tmp_path, monkeypatch):
    # Scripted dev scores (dense, hash, pq per epoch), then the test evaluation's: the run
    # improves in epochs 1-2, then not for two epochs, and stops there under a ceiling of 6.
    from meet_milvus_training import trainer as trainer_mod

    script = iter([10.0, 12.0, 11.0, 12.0, 99.0, 99.0, 5.0])
    monkeypatch.setattr(
        trainer_mod, "rsums", lambda _: dict.fromkeys(("dense", "hash", "pq", "sum"), next(script))
    )
    logs: list[str] = []
    config = TrainConfig(**{**TINY, "num_epochs": 6, "patience": 2})
    result = train(config, settings, output=tmp_path / "run", progress=False, log=logs.append)
    assert [h.epoch for h in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 2 and result.best["sum"] == 12.0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epoch"] == 2
    assert any(
        line.startswith("early stop: dev rSum has not improved since epoch 2") for line in logs
    )
    # Patience 0: the fixed count, every epoch trained.
    script = iter([3.0, 2.0, 1.0])
    config = TrainConfig(**{**TINY, "num_epochs": 2, "patience": 0})
    result = train(config, settings, output=tmp_path / "fixed", progress=False, log=logs.append)
    assert [h.epoch for h in result.history] == [1, 2] and result.best_epoch == 1


def test_per_modality_codebooks_train_save_and_load(settings, dev, tmp_path):
    config = TrainConfig(**{**TINY, "num_epochs": 1}, pq_layout="per_modality")
    result = train(config, settings, output=tmp_path / "per", progress=False, log=lambda _: None)
    model = load_checkpoint(result.checkpoint, device="cpu")
    assert model.config.pq_layout == "per_modality" and model.codebooks.shape == (2, 8, 256, 8)
    assert not np.array_equal(model.codebooks_for("image"), model.codebooks_for("text"))
    # Each modality's codes are its nearest codewords in its own set.
    for enc, m in ((model.encode_images(dev.images[:5]), "image"),
                   (model.encode_texts(dev.captions[:6]), "text")):  # fmt: skip
        parts = enc.head.reshape(len(enc), 8, 8)
        dist = ((parts[:, :, None, :] - model.codebooks_for(m)[None]) ** 2).sum(-1)
        assert np.array_equal(enc.pq_codes, dist.argmin(-1))


def test_a_checkpoint_from_before_pq_layout_loads_as_shared(trained, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained.checkpoint, old, ignore=shutil.ignore_patterns("last", "tb"))
    raw = json.loads((old / "config.json").read_text())
    del raw["pq_layout"]
    (old / "config.json").write_text(json.dumps(raw))
    model = load_checkpoint(old, device="cpu")
    assert model.config.pq_layout == "shared" and model.codebooks.shape == (8, 256, 8)
    assert np.array_equal(model.codebooks_for("image"), model.codebooks_for("text"))


def test_frozen_transformer_is_read_only_when_a_caption_needs_it(trained, dev):
    # Image queries and cached encodings never pay for transformers (seconds to import and read).
    fresh = load_checkpoint(trained.checkpoint, device="cpu")
    lazy = fresh.net.text_encoder._lazy
    assert lazy is not None and lazy._loaded is None
    assert not any(k.startswith("text_encoder.transformer.") for k in fresh.net.state_dict())
    fresh.encode_images(dev.images[:2])
    assert lazy._loaded is None
    live = load_checkpoint(trained.checkpoint, device="cpu").encode_texts(dev.captions[:3])
    assert np.array_equal(fresh.encode_texts(dev.captions[:3]).dense, live.dense)
    assert lazy._loaded is not None
