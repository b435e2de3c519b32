"""The training loop: epochs of the objective, PQ refresh, dev validation, best/last checkpoints.

Output directory layout (default {data_dir}/checkpoints/{data_name}):
    config.json, model.safetensors, ...   the best epoch's checkpoint (load_checkpoint(dir))
    last/                                  the latest epoch + optimizer state (--resume)
    tb/                                    TensorBoard logs
    history.json                           per-epoch losses, dev rSums, times
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from meet_milvus.config import Settings, resolve_device
from meet_milvus.errors import CheckpointError, DataSetError, MeetError
from meet_milvus.evaluation import TIE_POLICY
from meet_milvus.model.checkpoint import load_checkpoint, load_network, read_config
from meet_milvus.model.config import ModelConfig
from meet_milvus.model.encoders import BertTextEncoder
from meet_milvus.model.meet_model import MeetModel
from meet_milvus.model.network import TRANSFORMER_PREFIX, MeetNet, build_net
from meet_milvus.model.quantization import Quantizers
from meet_milvus.model.text_model import resolve_text_model, text_model_sha
from meet_milvus.model.vocab import Vocabulary
from meet_milvus.progress import progress_bar
from meet_milvus_training import data as data_mod
from meet_milvus_training.checkpoint import (
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from meet_milvus_training.config import TrainConfig
from meet_milvus_training.evaluate import retrieval_recalls, rsums
from meet_milvus_training.objective_base import StepContext
from meet_milvus_training.objectives import build_objective
from meet_milvus_training.text_cache import TokenStateCache


@dataclass
class EpochLog:
    epoch: int  # 1-based
    loss: dict[str, float]
    dev: dict[str, float]  # rSums: dense, hash, pq, sum
    train_seconds: float
    epoch_seconds: float
    samples_per_s: float
    best: bool = False


@dataclass
class TrainResult:
    checkpoint: Path
    best_epoch: int
    best: dict[str, float]
    history: list[EpochLog] = field(default_factory=list)
    seconds: float = 0.0
    test: dict | None = None  # {"dense"|"hash"|"pq": Recall} of the best checkpoint on test


@dataclass
class _Run:
    """What a training run carries from epoch to epoch."""

    net: MeetNet
    quantizer: Quantizers
    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    batcher: Callable
    encoder: MeetModel  # the live network wrapped for validation
    start_epoch: int = 0
    best: dict[str, float] | None = None
    best_epoch: int = 0
    history: list[EpochLog] = field(default_factory=list)


def _summary_writer(path: Path):
    """TensorBoard's writer; tensorboard comes with the `train` extra (serving needs none)."""
    try:  # tensorboard loads slowly: only when a run starts
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MeetError(
            "meet-train logs to TensorBoard, which is not installed: "
            "pip install 'meet-milvus[train]'"
        ) from None
    return SummaryWriter(str(path))


def default_output(settings: Settings, data_name: str) -> Path:
    return Path(settings.data_dir) / "checkpoints" / data_name


def resume_dir(path: Path) -> Path:
    """A run directory or its `last/`: the one holding the resumable state."""
    path = Path(path)
    if (path / "last" / "trainer.json").is_file():
        return path / "last"
    if (path / "trainer.json").is_file():
        return path
    raise CheckpointError(f"resume {path}: no resumable run there (expected last/trainer.json)")


# What defines the encoders: a run started --init_from another takes these from it.
ENCODER_FIELDS = (
    "text_encoder",
    "text_model",
    "text_finetune",
    "max_text_len",
    "word_dim",
    "embed_size",
    "attn_dim",
    "pool_heads",
    "dropout",
)


# The network's shape, recorded in the checkpoint's ModelConfig.
SHAPE_FIELDS = ("word_dim", "attn_dim", "pool_heads", "dropout", "feature_dropout", "mlp")


def inherit_encoders(config: TrainConfig, base: TrainConfig) -> TrainConfig:
    """`config` with the encoder settings of the run it starts from (--init_from)."""
    return config.model_copy(update={k: getattr(base, k) for k in ENCODER_FIELDS})


def resumed_config(path: Path, **overrides) -> TrainConfig:
    """The saved run's config with `overrides` (e.g. num_epochs) applied."""
    saved = TrainConfig.model_validate(read_config(resume_dir(path)).train)
    return saved.model_copy(update={k: v for k, v in overrides.items() if v is not None})


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        settings: Settings,
        output: Path | None = None,
        device: str | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.settings = settings
        self.output = Path(output) if output else default_output(settings, config.data_name)
        self.output_given = output is not None
        self.device = resolve_device(device or settings.device)
        self.cuda = self.device.startswith("cuda")
        self.progress = progress
        self.log = log

    # ---- set-up -------------------------------------------------------------------------

    def _load_data(self) -> None:
        c, d = self.config, self.settings.data_dir
        self.train_split = data_mod.load(d, c.data_name, "train")
        self.dev_split = data_mod.load(d, c.data_name, "dev")
        dim = data_mod.feature_dim(self.train_split)
        if data_mod.feature_dim(self.dev_split) != dim:
            raise DataSetError(
                f"data set {c.data_name!r}: dev features have dim "
                f"{data_mod.feature_dim(self.dev_split)}, train features {dim}"
            )
        self.pair_index = data_mod.PairIndex(self.train_split)

    def _model_config(self) -> tuple[ModelConfig, Vocabulary | None]:
        c = self.config
        vocab, text_model, sha = None, None, None
        if c.text_encoder == "bigru":
            vocab = Vocabulary.build(self.train_split.captions)
        else:
            path = resolve_text_model(c.text_model or self.settings.text_model)
            text_model, sha = str(path), text_model_sha(path)
        mc = ModelConfig(
            H=c.H,
            M=c.M,
            K=c.K,
            pq_layout=c.pq_layout,
            embed_dim=c.embed_size,
            feature_dim=data_mod.feature_dim(self.train_split),
            text_encoder=c.text_encoder,
            text_model=text_model,
            text_model_sha=sha,
            text_finetune=c.text_finetune,
            vocab_size=len(vocab) if vocab else None,
            max_text_len=c.max_text_len,
            **{k: getattr(c, k) for k in SHAPE_FIELDS},
            train=c.model_dump(),
        )
        return mc, vocab

    def _optimizer(self, net: MeetNet, objective: torch.nn.Module) -> torch.optim.Optimizer:
        c = self.config
        main, heads, text = [], [], []
        for name, p in net.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith(TRANSFORMER_PREFIX):
                text.append(p)
            elif name.startswith(("image_head.", "text_head.")):
                heads.append(p)
            else:
                main.append(p)
        own = [p for p in objective.parameters() if p.requires_grad]
        groups = [
            {"params": main + own, "lr": c.learning_rate},
            {"params": heads, "lr": c.learning_hash_rate or c.learning_rate},
        ]
        if text:
            groups.append({"params": text, "lr": c.text_lr})
        self.base_lrs = [g["lr"] for g in groups]
        # AdamW with weight_decay=0 is Adam.
        return torch.optim.AdamW(groups, weight_decay=c.weight_decay)

    def _text_batcher(self, net: MeetNet):
        enc = net.text_encoder
        if isinstance(enc, BertTextEncoder) and not enc.finetune:
            texts = list(self.train_split.captions) + list(self.dev_split.captions)
            cache = TokenStateCache.build(
                enc,
                texts,
                self.settings.cache_dir,
                self.model_config.text_model_sha,
                device=self.device,
                progress=self.progress,
            )
            return cache.lookup
        return enc.tokenize

    def _init_from(self, path: Path) -> tuple[MeetNet, Quantizers, ModelConfig]:
        """Another checkpoint's network (encoders, concept branch) with new hash heads and
        codebooks for this run's H, M, K."""
        c = self.config
        net, _, base = load_network(path, self.device)
        update = {"H": c.H, "M": c.M, "K": c.K, "pq_layout": c.pq_layout, "epoch": 0,
                  "scores": {}, "train": c.model_dump()}  # fmt: skip
        config = base.model_copy(update={**update, "fingerprint": ""})
        net.reset_heads(c.H)
        quantizer = Quantizers(c.H, c.M, c.K, c.pq_layout)
        return net.to(self.device), quantizer.to(self.device), config

    # ---- the run --------------------------------------------------------------------------

    def run(self, resume: Path | None = None) -> TrainResult:
        deterministic = torch.are_deterministic_algorithms_enabled()
        if not self.cuda:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return self._run(resume)
        finally:
            torch.use_deterministic_algorithms(deterministic)

    def _run(self, resume: Path | None) -> TrainResult:
        """Set up (fresh, --init_from or resumed), then per epoch: train, validate, save."""
        c = self.config
        started = time.perf_counter()
        run = self._set_up(resume)
        self.output.mkdir(parents=True, exist_ok=True)
        tb = _summary_writer(self.output / "tb")
        self.log(
            f"training {c.objective} on {c.data_name}: {self.train_split.n_images} images, "
            f"{self.train_split.n_captions} captions, text {c.text_encoder}, device {self.device}"
        )
        self.log(f"dev rSum after each epoch, R@1/5/10 both ways ({TIE_POLICY})")
        if c.patience:
            self.log(
                f"stops when dev rSum ({c.select}) has not improved for {c.patience} "
                f"epoch(s), at most {c.num_epochs}; the best epoch is kept"
            )
        try:
            for epoch in range(run.start_epoch, c.num_epochs):
                if c.patience and epoch - run.best_epoch >= c.patience:
                    self.log(
                        f"early stop: dev rSum has not improved since epoch {run.best_epoch} "
                        f"({c.patience} epoch(s) of patience)"
                    )
                    break
                t0 = time.perf_counter()
                loss, seconds, samples = self._train_epoch(
                    epoch, run.net, run.objective, run.quantizer, run.optimizer, run.scaler,
                    run.batcher, tb,
                )  # fmt: skip
                dev = self._evaluate(run, epoch, tb)
                entry = EpochLog(
                    epoch=epoch + 1,
                    loss=loss,
                    dev=dev,
                    train_seconds=seconds,
                    epoch_seconds=time.perf_counter() - t0,
                    samples_per_s=samples / max(seconds, 1e-9),
                    best=run.best is None or dev[c.select] > run.best[c.select],
                )
                tb.add_scalar("train/samples_per_s", entry.samples_per_s, epoch + 1)
                self._save(run, entry)
                self.log(
                    f"epoch {epoch + 1}/{c.num_epochs}: loss {loss['total']:.3f}  dev rSum "
                    f"dense {dev['dense']:.1f}  hash {dev['hash']:.1f}  pq {dev['pq']:.1f}"
                    f"{'  (best)' if entry.best else ''}  [{entry.epoch_seconds:.0f}s, "
                    f"{entry.samples_per_s:.0f} samples/s]"
                )
        finally:
            tb.close()
        result = TrainResult(
            checkpoint=self.output,
            best_epoch=run.best_epoch,
            best=run.best or {},
            history=run.history,
            seconds=time.perf_counter() - started,
        )
        result.test = self._test(result)
        return result

    def _set_up(self, resume: Path | None) -> _Run:
        """Data, objective, network and codebooks (fresh, --init_from, or the resumed run's),
        optimizer; a resumed run's state restored, a fresh run's codebooks fitted."""
        c = self.config
        if c.workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._load_data()
        if c.init_from and resume is None:
            self.config = c = inherit_encoders(
                c, TrainConfig.model_validate(read_config(c.init_from).train)
            )
        torch.manual_seed(c.seed)
        objective = build_objective(c).to(self.device)
        if resume is not None:
            last = resume_dir(resume)
            if not self.output_given:
                self.output = last.parent  # continue the run where it lives
            net, quantizer, self.model_config = load_network(last, self.device)
            self.model_config = self.model_config.model_copy(update={"train": c.model_dump()})
        elif c.init_from:
            net, quantizer, self.model_config = self._init_from(Path(c.init_from))
        else:
            self.model_config, vocab = self._model_config()
            self.model_config = objective.configure(self.model_config, self.train_split)
            net = build_net(self.model_config, vocab).to(self.device)
            quantizer = Quantizers(c.H, c.M, c.K, c.pq_layout).to(self.device)
        if c.init_from and c.freeze_encoders:
            net.freeze_encoders()
        objective.attach(net, self.train_split, fresh=resume is None and not c.init_from)
        if self.model_config.feature_dim != data_mod.feature_dim(self.train_split):
            source = f"resume {resume}" if resume is not None else f"--init_from {c.init_from}"
            raise DataSetError(
                f"{source}: the model reads features of dim {self.model_config.feature_dim}, "
                f"data set {c.data_name!r} has {data_mod.feature_dim(self.train_split)}"
            )
        optimizer = self._optimizer(net, objective)
        batcher = self._text_batcher(net)
        run = _Run(
            net=net,
            quantizer=quantizer,
            objective=objective,
            optimizer=optimizer,
            scaler=torch.amp.GradScaler("cuda") if self.cuda else None,
            batcher=batcher,
            encoder=MeetModel(net, quantizer, self.model_config, self.device, text_batcher=batcher),
        )
        if resume is not None:
            state = load_training_state(last, optimizer, objective)
            run.start_epoch, run.best = state["epoch"], state["best"]
            run.best_epoch = state["best_epoch"]
            run.history = [EpochLog(**h) for h in state["history"]]
            if run.scaler is not None and state.get("scaler"):
                run.scaler.load_state_dict(state["scaler"])
            self.log(f"resumed from {last} after epoch {run.start_epoch}")
        else:
            shutil.rmtree(self.output / "tb", ignore_errors=True)
            self._refresh_codebooks(run.encoder, quantizer, epoch=-1)
        return run

    def _evaluate(self, run: _Run, epoch: int, tb) -> dict[str, float]:
        """After an epoch's steps: the objective's epoch hook, fresh codebooks, dev rSums."""
        run.objective.on_epoch_end(run.net, epoch)
        self._refresh_codebooks(run.encoder, run.quantizer, epoch)
        dev = rsums(self._recalls(run.encoder, self.dev_split))
        for k, v in dev.items():
            tb.add_scalar(f"dev/rsum_{k}", v, epoch + 1)
        return dev

    def _save(self, run: _Run, entry: EpochLog) -> None:
        """The epoch's checkpoint (as the best one too when it is), the resumable state in
        `last/`, and the history."""
        run.history.append(entry)
        mc = self.model_config.model_copy(update={"epoch": entry.epoch, "scores": entry.dev})
        if entry.best:
            run.best, run.best_epoch = entry.dev, entry.epoch
            save_checkpoint(self.output, run.net, run.quantizer, mc)
        last = self.output / "last"
        save_checkpoint(last, run.net, run.quantizer, mc)
        save_training_state(
            last,
            run.optimizer,
            run.objective,
            {
                "epoch": entry.epoch,
                "best": run.best,
                "best_epoch": run.best_epoch,
                "history": [asdict(h) for h in run.history],
                "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            },
        )
        history = json.dumps([asdict(h) for h in run.history], indent=2)
        (self.output / "history.json").write_text(history)

    def _train_epoch(self, epoch, net, objective, quantizer, optimizer, scaler, batcher, tb):
        c = self.config
        decay = 0.1 ** (epoch // c.lr_update)
        for group, lr in zip(optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = lr * decay
        # Seeds per epoch: a resumed run replays exactly what an uninterrupted one does.
        torch.manual_seed(c.seed * 1000 + epoch)
        loader = data_mod.train_loader(
            self.train_split,
            self.pair_index,
            batcher,
            c.batch_size,
            c.workers,
            seed=c.seed * 1000 + epoch,
            pin_memory=self.cuda,
        )
        net.train()
        objective.train()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        sums: dict[str, float] = {}
        steps, samples, seconds = 0, 0, 0.0
        amp = torch.autocast("cuda", dtype=torch.float16) if self.cuda else contextlib.nullcontext()
        bar = progress_bar(
            loader, desc=f"epoch {epoch + 1}/{c.num_epochs}", unit="batch", enabled=self.progress
        )
        base_step = epoch * len(loader)
        t0 = time.perf_counter()
        for batch in bar:
            batch = batch.to(self.device)
            with amp:
                out = net(batch.images, batch.text)
            ctx = StepContext(epoch=epoch, step=base_step + steps, net=net, quantizer=quantizer)
            res = objective(out, batch, ctx)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(res.total).backward()
                scaler.unscale_(optimizer)
            else:
                res.total.backward()
            if c.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            objective.after_step(net)
            parts = {"total": float(res.total.detach()), **res.parts}
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
                tb.add_scalar(f"train/{k}", v, base_step + steps)
            steps += 1
            samples += len(batch)
            bar.set_postfix(loss=f"{sums['total'] / steps:.3f}")
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        bar.close()
        return {k: v / max(steps, 1) for k, v in sums.items()}, seconds, samples

    def _refresh_codebooks(self, encoder: MeetModel, quantizer: Quantizers, epoch: int):
        """k-means per sub-space on the training split's head outputs (both modalities
        together, or each its own: `pq_layout`); warm started from the previous codebooks after
        the first fit."""
        split = self.train_split
        quantizer.fit(
            torch.from_numpy(encoder.encode_images(split.images).head),
            torch.from_numpy(encoder.encode_texts(split.captions).head),
            iters=self.config.kmeans_iters,
            seed=self.config.seed * 1000 + epoch + 1,
            warm_start=epoch >= 0,
        )

    def _recalls(self, encoder: MeetModel, split) -> dict:
        images = encoder.encode_images(split.images)
        texts = encoder.encode_texts(split.captions)
        return retrieval_recalls(images, texts, encoder.codebooks, split.caption_image)

    def _test(self, result: TrainResult) -> dict | None:
        """The best checkpoint, reloaded from disk, on the test split (when there is one)."""
        try:
            test = data_mod.load(self.settings.data_dir, self.config.data_name, "test")
        except MeetError as e:
            self.log(f"no test evaluation: {e}")
            return None
        model = load_checkpoint(result.checkpoint, self.device)
        recalls = self._recalls(model, test)
        r = rsums(recalls)
        self.log(
            f"test rSum (best epoch {result.best_epoch}): dense {r['dense']:.1f}  "
            f"hash {r['hash']:.1f}  pq {r['pq']:.1f}"
        )
        return recalls


def train(
    config: TrainConfig,
    settings: Settings,
    output: Path | None = None,
    resume: Path | None = None,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `config` on settings.data_dir; returns where the best checkpoint is and the history."""
    return Trainer(config, settings, output, device, progress, log).run(resume)
