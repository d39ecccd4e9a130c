"""Subcommand of the fast area: `fast-train`.

cifarlab fast-train --preset quick --seed 0
cifarlab fast-train --preset fast94 --run-dir runs/fast94-s0 --data-source DIR
cifarlab fast-train --resume runs/quick-s0

Trains on the 50,000 official training images and evaluates on the official test set, as the
speed-run literature does (see docs/fast-training.md). Every `FastConfig` field is a flag
(`--lr`, `--momentum`, `--low-res-epochs`...) that overrides the preset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.cli.flags import add_recipe_flags, overrides
from cifarlab.cli.train_cmds import add_bf16_alias, precision_alias

# Kept in sync with cifarlab.fast.PRESETS by a test.
PRESET_NAMES = ("fast94", "quick", "airbench94")


def register(sub: Any) -> None:
    from cifarlab.recipes import FastConfig

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
    add_recipe_flags(p, FastConfig, skip=("name",))
    add_bf16_alias(p)
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
    p.add_argument("--resume", metavar="RUN", help="continue the run folder RUN exactly")
    p.set_defaults(func=_fast_train)


def load_fast_data(
    source: Path | None, cache_dir: str | None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    from cifarlab import data

    data.prepare(source=source, cache_dir=cache_dir, progress=False)
    return data.load_split("train_full", cache_dir=cache_dir), data.load_split("test", cache_dir)


def _fast_train(args: argparse.Namespace) -> int:
    from cifarlab import fast

    given = {**overrides(args, fast.FastConfig), **precision_alias(args)}
    if args.resume:
        from cifarlab.cli.train_cmds import RESUME_OPTIONS, resume_run

        return resume_run(Path(args.resume), {k: given[k] for k in given if k in RESUME_OPTIONS})
    cfg = fast.get_preset(args.preset, **given)
    train_data, test_data = load_fast_data(args.data_source, cfg.cache_dir)
    run_dir = args.run_dir or Path("runs") / f"{cfg.name}-s{cfg.seed}"
    result = fast.train(cfg, train_data, test_data, run_dir=run_dir)
    print(json.dumps(result, indent=2))
    print(
        f"{cfg.name} seed {cfg.seed}: test accuracy {result['test_accuracy']:.4f} "
        f"(no TTA {result['test_accuracy_no_tta']:.4f}) in {result['wall_seconds']:.0f} s, "
        f"{result['images_per_second']:.0f} train img/s, "
        f"{result['gflops_per_second']:.0f} GFLOP/s; run folder {run_dir}"
    )
    return 0
