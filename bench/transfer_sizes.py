"""Frozen MobileNetV2 transfer at several input sizes: test accuracy and feature-extraction cost.

    # one size per locked job (each trains the head on freshly cached features, then evaluates)
    flock /tmp/cifarlab-cpu.lock .venv/bin/python bench/transfer_sizes.py --sizes 160 --train
    flock /tmp/cifarlab-cpu.lock .venv/bin/python bench/transfer_sizes.py --sizes 96 128 160

torchvision's ImageNet weights were trained at 224 px, while the seed study resized CIFAR-10
to 96 px (Keras ships weights for that size). For each `--sizes` PX this uses the run folder
`<runs-dir>/mobilenet_v2_transfer_<PX>px`: with `--train` it first runs
`cifarlab transfer --image-size PX` (features through ONNX Runtime, as for 96 px) and
`cifarlab evaluate` on it; without, it reads runs that exist and are evaluated. It copies each
run's artifacts (metrics, config, env, eval, timing, confusion matrix and curves; never
checkpoints) to `reports/runs/`, and writes `reports/bench/transfer_sizes.json`: per size the
test accuracy, the extraction seconds and images/s (train, mirrored train and val, as recorded
by the run) and the head-training seconds, plus the smallest size that meets the seed study's
floor. Sizes already in the JSON and not given again are kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from cifarlab import report, runinfo

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "bench" / "transfer_sizes.json"
FLOOR = report.REFERENCE["mobilenet_v2_transfer"][0]


def run_name(size: int) -> str:
    return f"mobilenet_v2_transfer_{size}px"


def train(size: int, runs_dir: Path, weights: str | None) -> None:
    cmd = [sys.executable, "-m", "cifarlab", "transfer", "--image-size", str(size)]
    cmd += ["--name", run_name(size), "--runs-dir", str(runs_dir)]
    if weights:
        cmd += ["--weights", weights]
    subprocess.run(cmd, check=True)
    evaluate = [sys.executable, "-m", "cifarlab", "evaluate", str(runs_dir / run_name(size))]
    subprocess.run(evaluate, check=True)


def row(size: int, run: Path) -> dict[str, Any]:
    """One size's numbers from its evaluated run folder (and its artifacts into reports/)."""
    from cifarlab.data import load_split

    ev = json.loads((run / "eval.json").read_text())
    config = json.loads((run / "config.json").read_text())
    timing = json.loads((run / "timing.json").read_text())
    if config.get("image_size", 96) != size:
        raise SystemExit(f"{run} was trained at {config.get('image_size')} px, not {size}")
    n_train, n_val = (len(load_split(s)[1]) for s in ("train", "val"))
    images = n_train * (2 if config.get("flip", True) else 1) + n_val
    dest = REPO / "reports" / "runs" / run.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in report.COPIED_FILES:
        if (run / name).is_file():
            shutil.copyfile(run / name, dest / name)
    loaded = report.load_run(run)
    report.plot_curves(run.name, loaded["metrics"], dest / report.CURVES_FILE)
    env = json.loads((run / "env.json").read_text())
    return {
        "image_size": size,
        "run": f"reports/runs/{run.name}",
        "command": report._command(env),
        "test_accuracy": ev["test_accuracy"],
        "test_loss": ev["test_loss"],
        "ece": ev["ece"],
        "feature_backend": config.get("feature_backend"),
        "feature_images": images,
        "feature_seconds": round(timing["feature_extraction_seconds"], 1),
        "feature_images_per_second": round(images / timing["feature_extraction_seconds"], 1),
        "head_seconds": round(timing["head_seconds"], 1),
        "inference_images_per_second": ev.get("inference_images_per_second"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", required=True, help="input sizes in px")
    ap.add_argument("--train", action="store_true", help="train and evaluate each size first")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs"))
    ap.add_argument("--weights", default=None, help="ImageNet .pth (default: env or hub cache)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    rows: dict[int, dict[str, Any]] = {}
    if args.out.is_file():
        rows = {r["image_size"]: r for r in json.loads(args.out.read_text())["sizes"]}
    for size in args.sizes:
        run = args.runs_dir / run_name(size)
        if args.train:
            train(size, args.runs_dir, args.weights)
        elif not (run / "eval.json").is_file():
            raise SystemExit(f"{run} is not an evaluated run; pass --train to make it")
        rows[size] = row(size, run)
        print(json.dumps(rows[size]), flush=True)
    ordered = [rows[s] for s in sorted(rows)]
    meeting = [r["image_size"] for r in ordered if r["test_accuracy"] >= FLOOR]
    result = {
        "benchmark": "transfer_sizes",
        "floor": FLOOR,
        "note": "one seed per size; each size trained and evaluated alone under the CPU lock",
        "sizes": ordered,
        "smallest_size_meeting_floor": min(meeting) if meeting else None,
    }
    runinfo.write_result(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
