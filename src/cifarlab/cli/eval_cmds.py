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
from typing import Any


def register(sub: Any) -> None:
    t = sub.add_parser(
        "transfer",
        help="train the MobileNetV2 transfer head on cached features (or fine-tune a run)",
        description=(
            "Head training on cached frozen-backbone features; with --finetune-from, "
            "end-to-end fine-tuning of a finished transfer run."
        ),
    )
    t.add_argument("--weights", help="ImageNet mobilenet_v2 .pth (default: env or hub cache)")
    t.add_argument("--name", help="run folder name under --runs-dir")
    t.add_argument("--runs-dir", default="runs")
    t.add_argument("--cache-dir", help="data cache folder (default: CIFARLAB_CACHE or user cache)")
    t.add_argument("--epochs", type=int, help="head epochs (default 30)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--label-smoothing", type=float)
    t.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="cache mirrored training features too (default on)",
    )
    t.add_argument(
        "--feature-backend",
        choices=("onnxruntime", "torch"),
        help=(
            "engine for the one-off backbone pass (default onnxruntime: 4.2x faster than "
            "torch on a 2-core CPU, reports/bench/transfer_features.json)"
        ),
    )
    t.add_argument("--feature-dtype", choices=("float32", "bfloat16"), help="torch backend only")
    t.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="torch backend: channels_last memory format for extraction (default off)",
    )
    t.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        help="resize the 32x32 images to PX x PX for the backbone (default 96, the seed study's)",
    )
    t.add_argument("--seed", type=int)
    t.add_argument("--finetune-from", metavar="RUN", help="fine-tune this transfer run instead")
    t.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (default 1)")
    t.add_argument("--augment", help="fine-tuning augmentation preset (default none)")
    t.add_argument("--subset", type=int, help="fine-tune on the first N training images")
    t.add_argument(
        "--trainable-from",
        type=int,
        help="fine-tune backbone blocks from this index on (0 = all of features[0..18])",
    )
    t.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--no-progress", action="store_true")
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
    from dataclasses import replace

    from cifarlab.transfer import FinetuneConfig, TransferConfig, finetune, train_transfer

    if args.finetune_from:
        fcfg = FinetuneConfig(finetune_from=args.finetune_from, runs_dir=args.runs_dir)
        over = {
            "name": args.name,
            "cache_dir": args.cache_dir,
            "epochs": args.finetune_epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "augment": args.augment,
            "subset": args.subset,
            "trainable_from": args.trainable_from,
            "seed": args.seed,
            "threads": args.threads,
        }
        fcfg = replace(fcfg, progress=not args.no_progress, **_given(over))
        run = finetune(fcfg)
    else:
        cfg = TransferConfig(runs_dir=args.runs_dir)
        over = {
            "name": args.name,
            "weights": args.weights,
            "cache_dir": args.cache_dir,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "label_smoothing": args.label_smoothing,
            "flip": args.flip,
            "feature_dtype": args.feature_dtype,
            "feature_backend": args.feature_backend,
            "channels_last": args.channels_last,
            "image_size": args.image_size,
            "seed": args.seed,
        }
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        run = train_transfer(replace(cfg, **_given(over)))
    print(f"run written to {run}; next: cifarlab evaluate {run}")
    return 0


def _pct(x: float | None) -> str:
    return "n/a (no validation columns in metrics.csv)" if x is None else f"{x:.2%}"


def _given(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def run_evaluate(args: argparse.Namespace) -> int:
    from cifarlab.evaluate import CONFUSION_FILE, EVAL_FILE, evaluate_run

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
