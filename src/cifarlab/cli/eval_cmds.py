"""`cifarlab transfer`, `cifarlab evaluate` and `cifarlab report`.

    cifarlab transfer --weights ../shared/weights/mobilenet_v2-b0353104.pth
    cifarlab transfer --finetune-from runs/mobilenet_v2_transfer --finetune-epochs 1
    cifarlab evaluate runs/mobilenet_v2_transfer --which best
    cifarlab report --runs-dir runs --out reports

`transfer` trains the MobileNetV2 head on cached backbone features (`cifarlab.transfer`);
with `--finetune-from RUN` it instead unfreezes the backbone of that run and fine-tunes it with
the training engine. `evaluate` writes `eval.json` and `confusion_matrix.png` into the run
folder; `report` collects every evaluated run into `reports/`.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from cifarlab.cli.flags import add_recipe_flags, overrides


def register(sub: Any) -> None:
    from cifarlab.recipes import FinetuneConfig, TransferConfig

    t = sub.add_parser(
        "transfer",
        help="train the MobileNetV2 transfer head on cached features (or fine-tune a run)",
        description=(
            "Head training on cached frozen-backbone features; with --finetune-from, "
            "end-to-end fine-tuning of a finished transfer run (same as `cifarlab finetune`)."
        ),
    )
    add_recipe_flags(t, TransferConfig)
    # `transfer --finetune-from RUN` is kept as an alias of `cifarlab finetune`: the fields
    # only fine-tuning has, and --finetune-epochs for its epochs.
    add_recipe_flags(t, FinetuneConfig, skip=tuple(f.name for f in fields(TransferConfig)))
    t.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (default 1)")
    t.set_defaults(func=run_transfer)

    e = sub.add_parser(
        "evaluate",
        help="test metrics, calibration and confusion matrix of a run",
        description="Evaluate a run on the test split; writes eval.json + confusion_matrix.png.",
    )
    e.add_argument("run", metavar="RUN", help="run folder, e.g. runs/baseline_cnn")
    e.add_argument("--which", choices=("best", "last"), default="best")
    e.add_argument("--batch-size", type=int, default=256, help="inference batch (default 256)")
    e.add_argument("--cache-dir", help="data cache folder (default: CIFARLAB_CACHE or user cache)")
    e.add_argument(
        "--backend",
        choices=("onnxruntime", "torch"),
        default="onnxruntime",
        help="inference engine (default onnxruntime, as serving uses)",
    )
    e.set_defaults(func=run_evaluate)

    r = sub.add_parser(
        "report",
        help="write reports/REPORT.md and results.json from evaluated runs",
        description="Collect evaluated runs into REPORT.md, results.json and figures.",
    )
    r.add_argument("runs", nargs="*", metavar="RUN", help="run folders (default: all evaluated)")
    r.add_argument("--runs-dir", default="runs", help="where to look when no RUN is given")
    r.add_argument("--out", default="reports", help="output folder (default reports)")
    r.set_defaults(func=run_report)


def run_transfer(args: argparse.Namespace) -> int:
    from cifarlab.transfer import FinetuneConfig, TransferConfig, finetune, train_transfer

    if args.finetune_from:
        given = overrides(args, FinetuneConfig)
        if args.finetune_epochs is not None:
            given["epochs"] = args.finetune_epochs
        elif "epochs" in given:
            del given["epochs"]  # --epochs means head epochs; fine-tuning has --finetune-epochs
        run = finetune(FinetuneConfig(**given))
    else:
        run = train_transfer(TransferConfig(**overrides(args, TransferConfig)))
    print(f"run written to {run}; next: cifarlab evaluate {run}")
    return 0


def _pct(x: float | None) -> str:
    return "n/a (no validation columns in metrics.csv)" if x is None else f"{x:.2%}"


def run_evaluate(args: argparse.Namespace) -> int:
    from cifarlab.evaluate import evaluate_run
    from cifarlab.runs import CONFUSION_FILE, EVAL_FILE

    res = evaluate_run(
        args.run,
        which=args.which,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        backend=args.backend,
    )
    print(
        f"{res['run']} ({res['model']}, {args.which} epoch {res['epoch']}): "
        f"test acc {res['test_accuracy']:.2%}, test loss {res['test_loss']:.4f}, "
        f"overfitting gap {_pct(res['overfitting_gap'])}\n"
        f"ECE {res['ece']:.4f} -> {res['ece_after_temperature']:.4f} after temperature "
        f"scaling (T={res['temperature']:.3f}); "
        f"{res['inference_images_per_second']:.0f} images/s ({res['inference_backend']}); "
        f"params {res['params_total']:,} total, {res['params_trainable']:,} trainable\n"
        f"wrote {args.run}/{EVAL_FILE} and {args.run}/{CONFUSION_FILE}"
    )
    return 0


def run_report(args: argparse.Namespace) -> int:
    from cifarlab.report import build_report

    out = build_report(args.runs or None, runs_dir=args.runs_dir, out_dir=args.out)
    print(f"wrote {out}")
    return 0
