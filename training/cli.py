"""`meet-train`: train MEET (or another registered objective) on a precomputed data set.

Flags mirror the reference (hq_train.py): --H 64 --M 8 --K 8 --margin 0.2 --max_violation ...
Unset flags take the TrainConfig defaults (the demo configuration). `--ablation` trains the four
ablation configurations instead and prints the rSum table of the test split.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from meet_milvus.config import load_settings
from meet_milvus.errors import MeetError, ParameterError
from meet_milvus_training.coder.options import coder_options, coder_values
from meet_milvus_training.config import TrainConfig

# Flags that map one-to-one onto TrainConfig fields (name, type, help).
_FIELDS: list[tuple[str, type | click.ParamType, str]] = [
    ("data_name", str, "data set name: {data_dir}/{name}_precomp"),
    ("objective", str, "training objective (meet; others register themselves)"),
    ("text_encoder", click.Choice(["bigru", "bert"]), "text encoder"),
    ("text_model", str, "BERT-family model directory (default: the offline all-MiniLM-L6-v2)"),
    ("text_finetune", click.IntRange(0, 1), "1: fine-tune the transformer at --text_lr; 0: frozen"),
    ("text_lr", float, "learning rate of a fine-tuned transformer"),
    ("max_text_len", int, "tokens kept per caption"),
    ("word_dim", int, "BiGRU word embedding size"),
    ("embed_size", int, "joint embedding size"),
    ("attn_dim", int, "width of the attention-pooling scorer"),
    ("pool_heads", int, "attention-pooling heads"),
    ("dropout", float, "dropout in the pooling scorers"),
    ("feature_dropout", float, "dropout on the pooled features"),
    ("weight_decay", float, "AdamW weight decay"),
    ("H", int, "hash code bits"),
    ("M", int, "PQ sub-spaces"),
    ("K", int, "bits per PQ code (2**K codewords per sub-space, K <= 8)"),
    ("kmeans_iters", int, "k-means iterations per codebook refresh"),
    ("pq_layout", click.Choice(["shared", "per_modality"]),
     "PQ codebooks shared by images and texts, or one set per modality"),
    ("margin", float, "ranking loss margin"),
    ("beta1", float, "weight of L_f (similarity preservation)"),
    ("beta2", float, "weight of L_q (quantization)"),
    ("filter_margin", float, "drop negatives scoring this far above the positive"),
    ("filter_warmup", int, "epochs before the similarity filter acts"),
    ("temperature", float, "temperature of the hardness softmax"),
    ("num_epochs", int, "most epochs (the ceiling when --patience stops earlier)"),
    ("patience", int, "stop when dev has not improved for this many epochs (0: never)"),
    ("batch_size", int, "mini-batch size"),
    ("learning_rate", float, "initial learning rate"),
    ("learning_hash_rate", float, "learning rate of the hash heads [learning_rate]"),
    ("lr_update", int, "epochs between learning-rate decays (x0.1)"),
    ("grad_clip", float, "gradient norm clip (0: off)"),
    ("workers", int, "DataLoader worker processes"),
    ("seed", int, "random seed"),
    ("select", click.Choice(["dense", "sum"]), "best epoch by dense rSum or by dense+hash+pq"),
    ("init_from", str, "start from this checkpoint's encoders (new heads and codebooks)"),
]
_SWITCHES = ("lf", "lq", "filter", "reweight", "mlp")


def _options(f):
    defaults = TrainConfig()
    for name, typ, help_ in reversed(_FIELDS):
        f = click.option(
            f"--{name}", name, type=typ, default=None, help=f"{help_} [{getattr(defaults, name)}]"
        )(f)
    f = click.option(
        "--max_violation/--no_max_violation",
        "max_violation",
        default=None,
        help="hardest negative instead of the sum [on]",
    )(f)
    for name in reversed(_SWITCHES):
        f = click.option(f"--no_{name}", f"no_{name}", is_flag=True, help=f"switch {name} off")(f)
    f = click.option(
        "--freeze_encoders/--train_encoders",
        "freeze_encoders",
        default=None,
        help="with --init_from: train only the heads (encoders frozen) [frozen]",
    )(f)
    return coder_options(f)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_options
@click.option(
    "--output",
    "--logger_name",
    "output",
    type=click.Path(path_type=Path),
    help="checkpoint directory [{data_dir}/checkpoints/{data_name}]",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    help="continue a run from its directory (or its last/)",
)
@click.option(
    "--ablation",
    is_flag=True,
    help="train the four ablation configurations and print the test rSum table",
)
@click.option("--device", help="auto, cpu, cuda or cuda:N")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings")
@click.option("--data-dir", "data_dir", type=click.Path(path_type=Path), help="data sets")
@click.option("--cache-dir", "cache_dir", type=click.Path(path_type=Path), help="caches")
@click.option("--quiet", is_flag=True, help="no progress bars")
def train_command(output, resume, ablation, device, config_file, data_dir, cache_dir, quiet, **kw):
    """Train MEET: encoders, 64-bit hash heads and 8x8-bit PQ codes on a precomp data set."""
    settings = load_settings(config_file, data_dir=data_dir, cache_dir=cache_dir, device=device)
    coder = coder_values(kw)
    values = {name: kw[name] for name, _, _ in _FIELDS if kw[name] is not None}
    if coder:
        values["coder"] = coder
    if kw["freeze_encoders"] is not None:
        values["freeze_encoders"] = kw["freeze_encoders"]
    if "text_finetune" in values:
        values["text_finetune"] = bool(values["text_finetune"])
    if kw["max_violation"] is not None:
        values["max_violation"] = kw["max_violation"]
    for name in _SWITCHES:
        if kw[f"no_{name}"]:
            values[name] = False
    if "text_model" not in values and settings.text_model is not None:
        values["text_model"] = str(settings.text_model)

    if resume is not None:
        from meet_milvus_training.trainer import resumed_config

        # The saved run defines the model; only how long and how to run may change.
        runtime = {k: values.get(k) for k in ("num_epochs", "patience", "workers")}
        config = resumed_config(resume, **runtime)
    else:
        config = _config(values)

    progress = not quiet
    if ablation and config.objective == "coder":
        from meet_milvus_training.coder.ablation import run_coder_ablation

        run_coder_ablation(config, settings, output=output, progress=progress)
        return
    if ablation:
        from meet_milvus_training.ablation import run_ablation

        run_ablation(config, settings, output=output, progress=progress)
        return
    from meet_milvus_training.trainer import train

    result = train(config, settings, output=output, resume=resume, progress=progress)
    b = result.best
    click.echo(
        f"best epoch {result.best_epoch}: dev rSum dense {b.get('dense', 0):.1f} hash "
        f"{b.get('hash', 0):.1f} pq {b.get('pq', 0):.1f}; checkpoint {result.checkpoint} "
        f"({result.seconds:.0f}s)"
    )


def _config(values: dict) -> TrainConfig:
    from pydantic import ValidationError

    try:
        return TrainConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise ParameterError(f"--{loc}: {msg}" if loc else msg) from None


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2, never a traceback."""
    try:
        train_command.main(args=argv, prog_name="meet-train", standalone_mode=False)
    except MeetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.UsageError as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
