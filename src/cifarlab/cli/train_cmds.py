"""`cifarlab train`: train a registered model into a run folder, or resume one.

    cifarlab train --model baseline_cnn --epochs 20 --name baseline_cnn
    cifarlab train --model augmented_cnn --subset 2000 --epochs 1 --name smoke
    cifarlab train --resume runs/baseline_cnn
    torchrun --standalone --nproc-per-node=2 -m cifarlab train --model baseline_cnn --subset 2000

Options left out take the `TrainConfig` defaults (see `cifarlab.train`); `augmented_cnn`
defaults to the `keras_aug` preset, every other model to `none`.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

# TrainConfig fields the command line sets directly.
_CONFIG_OPTIONS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "schedule",
    "augment",
    "label_smoothing",
    "seed",
    "patience",
    "monitor",
    "train_split",
    "subset",
    "bf16",
    "channels_last",
)
# Options that define a run; --resume continues the saved config, so they clash with it.
_RUN_OPTIONS = ("model", *_CONFIG_OPTIONS, "model_kwargs", "name", "run_dir")


def _kv(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model into runs/<name>/ (or --resume one)",
        description="Train a registered model on the prepared CIFAR-10 cache.",
    )
    p.add_argument("--model", help="registered model name (see `cifarlab train --list-models`)")
    p.add_argument("--list-models", action="store_true", help="print the model names and exit")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (default 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=("adam", "adamw", "sgd"))
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=("onecycle", "cosine", "constant"))
    p.add_argument("--augment", help="augmentation preset: none | keras_aug")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--patience", type=int, help="early stopping patience in epochs (0 = off)")
    p.add_argument("--monitor", choices=("val_acc", "val_loss"))
    p.add_argument("--train-split", choices=("train", "train_full"))
    p.add_argument("--subset", type=int, help="use the first N training images (smoke runs)")
    p.add_argument(
        "--model-kwarg",
        dest="model_kwargs",
        action="append",
        type=_kv,
        metavar="KEY=VALUE",
        help="extra model argument (JSON value), repeatable",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--name", help="run folder runs/NAME (default: the model name)")
    where.add_argument("--run-dir", help="run folder path")
    p.add_argument("--resume", metavar="RUN", help="continue the run folder RUN exactly")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="bf16 autocast (default off: much slower on CPUs without native bf16)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="channels_last memory format (default on: faster for these CNNs on CPU)",
    )
    p.add_argument("--cache-dir", help="data cache folder (default: CIFARLAB_CACHE or user cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from cifarlab.cli import CLIError
    from cifarlab.models import get_model, list_models
    from cifarlab.train import TrainConfig, fit, load_config

    if args.list_models:
        print("\n".join(list_models()))
        return 0
    common: dict[str, Any] = {"progress": not args.no_progress}
    if args.threads is not None:
        common["threads"] = args.threads
    if args.cache_dir is not None:
        common["cache_dir"] = args.cache_dir

    if args.resume:
        # `is not None`: --seed 0, --patience 0 or --no-bf16 clash as much as any other value.
        clashing = [
            "--model-kwarg" if k == "model_kwargs" else f"--{k.replace('_', '-')}"
            for k in _RUN_OPTIONS
            if getattr(args, k, None) is not None
        ]
        if clashing:
            raise CLIError(
                f"--resume continues the saved config of {args.resume}; drop {' '.join(clashing)}"
                " (or start a new run with --name)"
            )
        cfg = replace(load_config(args.resume), run_dir=args.resume, **common)
        result = fit(cfg, resume=True)
    else:
        if not args.model:
            raise CLIError(
                "--model is required (or --resume RUN); known models: " + ", ".join(list_models())
            )
        if args.model not in list_models():
            get_model(args.model)  # raises the registry's error listing the known models
        fields: dict[str, Any] = {
            k: getattr(args, k) for k in _CONFIG_OPTIONS if getattr(args, k) is not None
        }
        if args.train_split == "train_full":
            fields["val_split"] = "test"  # nothing is held out; report it honestly as test
        run_dir = args.run_dir or f"runs/{args.name or args.model}"
        cfg = TrainConfig(
            model=args.model,
            model_kwargs=dict(args.model_kwargs or []),
            run_dir=run_dir,
            **fields,
            **common,
        )
        result = fit(cfg, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":
        return 0  # one summary per distributed run
    best = result.best
    if result.history:
        print(
            f"run {result.run_dir}: best epoch {result.best_epoch} "
            f"val_acc {best.get('val_acc', float('nan')):.4f} "
            f"val_loss {best.get('val_loss', float('nan')):.4f}; "
            f"{len(result.history)} epochs in {result.train_seconds:.0f} s"
            + (" (stopped early)" if result.stopped_early else "")
        )
    else:
        print(f"run {result.run_dir}: nothing left to train")
    return 0
