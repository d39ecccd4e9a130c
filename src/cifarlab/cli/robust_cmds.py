"""Subcommand of the robustness area: `robustness`.

cifarlab robustness src/cifarlab/serve/models/default.onnx --label bundled
cifarlab robustness runs/robust94-s0 --tta --subset 2000 --corruption-cache /tmp/c10c
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from cifarlab.corruptions import CORRUPTIONS

    p = sub.add_parser(
        "robustness",
        help="accuracy under CIFAR-10-C corruptions and JPEG re-encoding (ONNX Runtime)",
        description=(
            "Measure a model (.onnx file or run folder) on the official test set: clean, "
            "JPEG-quality sweep, and the 15 CIFAR-10-C corruptions at 5 severities, generated "
            "reproducibly from a seed and cached. Merges the result into "
            "reports/robustness.json under --label and draws a heatmap."
        ),
    )
    p.add_argument("target", type=Path, help="an exported .onnx file or a run folder")
    p.add_argument("--label", default=None, help="name in robustness.json (default: file/run)")
    p.add_argument("--tta", action="store_true", help="run folders: export with flip TTA")
    p.add_argument(
        "--subset",
        type=int,
        default=None,
        help="measure a fixed stratified subset of N test images (default: all 10,000)",
    )
    p.add_argument("--seed", type=int, default=0, help="corruption seed (default 0)")
    p.add_argument(
        "--corruptions",
        nargs="+",
        choices=CORRUPTIONS,
        default=list(CORRUPTIONS),
        metavar="NAME",
        help="only these corruptions (default: all 15)",
    )
    p.add_argument(
        "--corruption-cache",
        type=Path,
        default=None,
        help="folder for the generated corrupted test sets (default: the data cache)",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="data cache ($CIFARLAB_CACHE)")
    p.add_argument("--out", type=Path, default=Path("reports/robustness.json"), help="results JSON")
    p.add_argument("--figures", type=Path, default=Path("reports/figures"), help="heatmap folder")
    p.add_argument(
        "--generate-only",
        action="store_true",
        help="only generate and cache the corrupted test sets (TARGET is ignored)",
    )
    p.set_defaults(func=_robustness)


def _robustness(args: argparse.Namespace) -> int:
    from cifarlab import robustness
    from cifarlab.data import default_cache_dir

    cache_root = args.corruption_cache or (args.cache_dir or default_cache_dir())
    if args.generate_only:
        files = robustness.generate(
            cache_root, seed=args.seed, names=args.corruptions, data_cache=args.cache_dir
        )
        print(f"{len(files)} corrupted test sets cached in {files[0].parent if files else '-'}")
        return 0
    entry = robustness.run(
        args.target,
        label=args.label,
        tta=args.tta,
        subset=args.subset,
        seed=args.seed,
        cache_root=cache_root,
        data_cache=args.cache_dir,
        out=args.out,
        figures=args.figures,
        names=args.corruptions,
        command=shlex.join(["cifarlab", *sys.argv[1:]]),
    )
    jpeg = ", ".join(f"q{q} {v['accuracy']:.4f}" for q, v in entry["jpeg"].items())
    mca = entry["mean_corruption_accuracy"]
    print(
        f"{args.label or args.target}: clean {entry['clean']['accuracy']:.4f} "
        f"(ECE {entry['clean']['ece']:.4f}); JPEG {jpeg}; mean corruption accuracy "
        f"{'n/a' if mca is None else f'{mca:.4f}'} on {entry['n_images']:,} images; "
        f"written to {args.out}"
    )
    return 0
