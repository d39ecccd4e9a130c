"""Subcommand of the fast area: `fast-train`.

cifarlab fast-train --preset quick --seed 0
cifarlab fast-train --preset fast94 --run-dir runs/fast94-s0 --data-source DIR

Trains on the 50,000 official training images and evaluates on the official test set, as the
speed-run literature does (see docs/fast-training.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

PRESET_NAMES = ("fast94", "quick")  # kept in sync with cifarlab.fast.PRESETS by a test


def register(sub: Any) -> None:
    p = sub.add_parser(
        "fast-train",
        help="train the fast from-scratch net (fast94: 94%% in minutes on CPU)",
        description=(
            "Fast from-scratch CIFAR-10 training on CPU. Trains on all 50,000 official "
            "training images, evaluates on the official test set with test-time augmentation, "
            "and writes a normal run folder (config.json, env.json, metrics.csv, best/last "
            "checkpoints, result.json)."
        ),
    )
    p.add_argument("--preset", choices=PRESET_NAMES, default="fast94", help="recipe")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--run-dir", type=Path, default=None, help="run folder (default runs/<preset>-s<seed>)"
    )
    p.add_argument(
        "--data-source",
        type=Path,
        default=None,
        help="CIFAR-10 folder or archive to prepare the cache from (default: existing cache, "
        "$CIFARLAB_DATA_SOURCE, or download)",
    )
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="data cache (default $CIFARLAB_CACHE)"
    )
    p.add_argument("--epochs", type=float, default=None, help="override the preset's epochs")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (pays only on CPUs with native bf16)",
    )
    p.add_argument(
        "--jpeg-copies",
        type=int,
        default=None,
        help="JPEG augmentation: re-encoded copies of the training set to draw from (0: off)",
    )
    p.add_argument(
        "--jpeg-quality",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="Pillow quality range of the JPEG copies (default 30 95)",
    )
    p.add_argument(
        "--jpeg-fraction",
        type=float,
        default=None,
        help="share of each batch taken from a JPEG copy (default 0.5)",
    )
    p.add_argument(
        "--jpeg-clean-epochs",
        type=int,
        default=None,
        help="last epochs that train on clean images only (default 0)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=None,
        help="fraction of training images held out to fit the softmax temperature (default 0)",
    )
    p.add_argument(
        "--widths", type=int, nargs=3, default=None, help="override the net's three widths"
    )
    p.set_defaults(func=_fast_train)


def _fast_train(args: argparse.Namespace) -> int:
    from cifarlab import data, fast

    overrides: dict[str, Any] = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.bf16 is not None:
        overrides["bf16"] = args.bf16
    for name in ("jpeg_copies", "jpeg_fraction", "jpeg_clean_epochs", "holdout"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    for name in ("jpeg_quality", "widths"):
        if getattr(args, name) is not None:
            overrides[name] = tuple(getattr(args, name))
    cfg = fast.get_preset(args.preset, **overrides)
    data.prepare(source=args.data_source, cache_dir=args.cache_dir, progress=False)
    train_data = data.load_split("train_full", cache_dir=args.cache_dir)
    test_data = data.load_split("test", cache_dir=args.cache_dir)
    run_dir = args.run_dir or Path("runs") / f"{cfg.name}-s{args.seed}"
    command = shlex.join(["cifarlab", *sys.argv[1:]])
    result = fast.train(
        cfg, train_data, test_data, run_dir=run_dir, seed=args.seed, command=command
    )
    print(json.dumps(result, indent=2))
    print(
        f"{cfg.name} seed {args.seed}: test accuracy {result['test_accuracy']:.4f} "
        f"(no TTA {result['test_accuracy_no_tta']:.4f}) in {result['wall_seconds']:.0f} s, "
        f"{result['images_per_second']:.0f} train img/s, "
        f"{result['gflops_per_second']:.0f} GFLOP/s; run folder {run_dir}"
    )
    return 0
