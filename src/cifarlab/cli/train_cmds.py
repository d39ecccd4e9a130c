"""`cifarlab train` (the standard recipe, and `--resume` of any run) and `cifarlab finetune`.

    cifarlab train --recipe seed-baseline
    cifarlab train --model augmented_cnn --subset 2000 --epochs 1 --name smoke
    cifarlab train --resume runs/baseline_cnn        # any recipe's run folder
    cifarlab finetune --finetune-from runs/mobilenet_v2_transfer --epochs 1
    torchrun --standalone --nproc-per-node=2 -m cifarlab train --model baseline_cnn --subset 2000

Flags are generated from the recipe dataclasses (`cifarlab.cli.flags`); options left out
take the preset's values (`--recipe`) or the `StandardRecipe` defaults.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from cifarlab.cli.flags import add_recipe_flags, flag_name, overrides

# May be given with --resume: they change how the run is executed, not what it computes.
RESUME_OPTIONS = ("threads", "progress", "cache_dir")


def add_bf16_alias(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="old spelling of --precision bf16 (--no-bf16: --precision fp32)",
    )


def precision_alias(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "bf16", None) is None:
        return {}
    return {"precision": "bf16" if args.bf16 else "fp32"}


def register(sub: Any) -> None:
    from cifarlab.recipes import FinetuneConfig, StandardRecipe

    p = sub.add_parser(
        "train",
        help="train a model into runs/<name>/ (or --resume any run)",
        description="Train a registered model with the standard recipe, or resume any run.",
    )
    p.add_argument("--recipe", help="start from a preset: seed-baseline | seed-augmented")
    p.add_argument("--list-models", action="store_true", help="print the model names and exit")
    add_recipe_flags(p, StandardRecipe)
    add_bf16_alias(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--name", help="run folder runs/NAME (default: the model name)")
    where.add_argument("--run-dir", help="run folder path")
    p.add_argument("--resume", metavar="RUN", help="continue the run folder RUN exactly")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(func=run)

    f = sub.add_parser(
        "finetune",
        help="fine-tune a MobileNetV2 transfer run end to end",
        description="Unfreeze the backbone of a transfer run and train it end to end.",
    )
    add_recipe_flags(f, FinetuneConfig)
    f.set_defaults(func=run_finetune)


def run(args: argparse.Namespace) -> int:
    from cifarlab.cli import CLIError
    from cifarlab.models import get_model, list_models
    from cifarlab.recipes import SEED_PRESETS, StandardRecipe, get_recipe
    from cifarlab.train import train

    if args.list_models:
        print("\n".join(list_models()))
        return 0
    given = {**overrides(args, StandardRecipe), **precision_alias(args)}
    if args.resume:
        # `is not None`: --seed 0 or --no-bf16 clash as much as any other value.
        clashing = [
            flag_name(f)
            for f in fields(StandardRecipe)
            if f.name in given
            and f.name not in RESUME_OPTIONS
            and f.name in vars(args)
            and getattr(args, f.name) is not None
        ]
        clashing += [
            f"--{o.replace('_', '-')}"
            for o in ("recipe", "name", "run_dir", "bf16")
            if getattr(args, o) is not None
        ]
        if clashing:
            flags = " ".join(clashing)
            raise CLIError(
                f"--resume continues the saved config of {args.resume}; drop {flags}"
                " (or start a new run with --name)"
            )
        return resume_run(Path(args.resume), {k: given[k] for k in given})
    if args.recipe and args.recipe not in SEED_PRESETS:
        raise CLIError(
            f"unknown recipe {args.recipe!r} for `cifarlab train`; pick one of "
            f"{', '.join(SEED_PRESETS)} (fast94/quick: `cifarlab fast-train --preset`, "
            "transfer: `cifarlab transfer`, finetune: `cifarlab finetune`)"
        )
    if not args.recipe and not args.model:
        raise CLIError(
            "--model or --recipe is required (or --resume RUN); known models: "
            + ", ".join(list_models())
        )
    if args.model and args.model not in list_models():
        get_model(args.model)  # raises the registry's error listing the known models
    recipe = get_recipe(args.recipe, **given) if args.recipe else StandardRecipe(**given)
    assert isinstance(recipe, StandardRecipe)
    run_dir = args.run_dir or f"runs/{args.name or args.recipe or recipe.model}"
    result = train(recipe, run_dir, overwrite=args.overwrite)
    return _summary(result)


def _summary(result: Any) -> int:
    if os.environ.get("RANK", "0") != "0":
        return 0  # one summary per distributed run
    best = result.best
    if result.history:
        val_acc, val_loss = best.get("val_acc"), best.get("val_loss")
        print(
            f"run {result.run_dir}: best epoch {result.best_epoch} "
            f"val_acc {val_acc if val_acc is not None else float('nan'):.4f} "
            f"val_loss {val_loss if val_loss is not None else float('nan'):.4f}; "
            f"{len(result.history)} epochs in {result.train_seconds:.0f} s"
            + (" (stopped early)" if result.stopped_early else "")
        )
    else:
        print(f"run {result.run_dir}: nothing left to train")
    return 0


def resume_run(run_dir: Path, given: dict[str, Any]) -> int:
    """Continue any recipe's run folder from its last checkpoint, exactly."""
    from cifarlab import fast, train, transfer
    from cifarlab.recipes import load_recipe

    recipe = replace(load_recipe(run_dir), **given)
    if isinstance(recipe, train.StandardRecipe):
        return _summary(train.train(recipe, run_dir, resume=True))
    if isinstance(recipe, fast.FastConfig):
        from cifarlab.cli.fast_cmds import load_fast_data

        train_data, test_data = load_fast_data(None, recipe.cache_dir)
        result = fast.train(recipe, train_data, test_data, run_dir, resume=True)
        print(f"run {run_dir}: test accuracy {result.get('test_accuracy')}")
        return 0
    if isinstance(recipe, transfer.TransferConfig):
        recipe = replace(recipe, runs_dir=str(run_dir.parent), name=run_dir.name)
        transfer.train_transfer(recipe, resume=True)
        print(f"run {run_dir} finished; next: cifarlab evaluate {run_dir}")
        return 0
    raise AssertionError(f"no resume for {type(recipe).__name__}")


def run_finetune(args: argparse.Namespace) -> int:
    from cifarlab.transfer import FinetuneConfig, finetune

    run = finetune(FinetuneConfig(**overrides(args, FinetuneConfig)))
    print(f"run written to {run}; next: cifarlab evaluate {run}")
    return 0
