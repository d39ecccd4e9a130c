"""Benchmark a fast-training preset over several seeds, each in a clean process.

    python bench/fast_training.py --preset fast94 --seeds 5
    python bench/fast_training.py --preset quick --seeds 5   # -> fast_training_quick.json

Each seed runs `cifarlab fast-train` in a fresh subprocess that starts from the prepared data
cache (run `cifarlab data prepare` first). `wall_seconds` is measured inside that process and
covers model build, whitening, training and the final TTA evaluation (the data is already
cached; loading it into memory takes about a second and is reported separately as part of
`process_seconds` in the details file). Results are written after every seed, so a cut-short
benchmark still leaves honest numbers behind.

Output: `reports/bench/fast_training.json` for fast94, `reports/bench/fast_training_<preset>.json`
otherwise, with the schema {"preset", "runs": [{"seed", "test_accuracy",
"test_accuracy_no_tta", "wall_seconds", "images_per_second"}], "mean_accuracy",
"std_accuracy", "median_wall_seconds", "hardware", "torch", "date", "command"}; per-run
detail (time split, GFLOP/s, flip-only TTA accuracy) goes to `<same name>.details.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cifarlab.runinfo import hardware

REPO = Path(__file__).resolve().parents[1]


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(f.name, path)


def _same_config(run_dir: Path, preset: str, seed: int, extra: list[str]) -> bool:
    """Whether `run_dir` was trained with exactly today's preset (and overrides) and seed."""
    from cifarlab import fast

    overrides = {"epochs": float(extra[1])} if extra else {}
    want = fast.get_preset(preset, seed=seed, **overrides).to_config()
    try:
        got = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    # JSON turns tuples into lists; compare through one JSON round trip.
    return bool(got == json.loads(json.dumps(want)))


def run_seed(
    preset: str, seed: int, run_dir: Path, extra: list[str], reuse: bool = False
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "cifarlab",
        "fast-train",
        "--preset",
        preset,
        "--seed",
        str(seed),
        "--run-dir",
        str(run_dir),
        *extra,
    ]
    if reuse and (run_dir / "result.json").is_file():
        old = json.loads((run_dir / "result.json").read_text())
        if _same_config(run_dir, preset, seed, extra):
            print(f"seed {seed}: reusing the finished run in {run_dir}", flush=True)
            old["reused"] = True
            return old
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    process_seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"seed {seed} failed with exit code {proc.returncode}")
    result = json.loads((run_dir / "result.json").read_text())
    result["process_seconds"] = round(process_seconds, 2)
    return result


def summarise(preset: str, results: list[dict[str, Any]], command: str) -> dict[str, Any]:
    import torch

    accs = [r["test_accuracy"] for r in results]
    return {
        "preset": preset,
        "runs": [
            {
                "seed": r["seed"],
                "test_accuracy": r["test_accuracy"],
                "test_accuracy_no_tta": r["test_accuracy_no_tta"],
                "wall_seconds": r["wall_seconds"],
                "images_per_second": r["images_per_second"],
            }
            for r in results
        ],
        "mean_accuracy": round(statistics.fmean(accs), 5),
        "std_accuracy": round(statistics.stdev(accs), 5) if len(accs) > 1 else 0.0,
        "median_wall_seconds": round(statistics.median(r["wall_seconds"] for r in results), 2),
        "hardware": hardware(),
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fast94")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--runs-root", type=Path, default=REPO / "runs", help="where run folders go")
    p.add_argument("--epochs", type=float, default=None, help="override the preset's epochs")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse a seed's finished run folder if its config.json equals the preset's "
        "(it was produced by the same `cifarlab fast-train` process); marked in the details",
    )
    args = p.parse_args(argv)

    out = args.out or REPO / "reports" / "bench" / (
        "fast_training.json" if args.preset == "fast94" else f"fast_training_{args.preset}.json"
    )
    extra = [] if args.epochs is None else ["--epochs", str(args.epochs)]
    command = shlex.join(["python", "bench/fast_training.py", *(argv or sys.argv[1:])])
    results: list[dict[str, Any]] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        run_dir = args.runs_root / f"bench-{args.preset}-s{seed}"
        r = run_seed(args.preset, seed, run_dir, extra, args.reuse)
        results.append(r)
        print(
            f"seed {seed}: acc {r['test_accuracy']:.4f} (no TTA {r['test_accuracy_no_tta']:.4f}) "
            f"wall {r['wall_seconds']:.1f} s (train {r['train_seconds']:.1f}, eval "
            f"{r['eval_seconds']:.1f}), {r['images_per_second']:.0f} img/s, "
            f"{r['gflops_per_second']:.1f} GFLOP/s",
            flush=True,
        )
        summary = summarise(args.preset, results, command)
        write_json(out, summary)
        write_json(out.with_suffix(".details.json"), {"command": command, "runs": results})
    print(
        f"{args.preset}: mean {summary['mean_accuracy']:.4f} +- {summary['std_accuracy']:.4f} "
        f"over {len(results)} seeds, median wall {summary['median_wall_seconds']:.0f} s, "
        f"mean {statistics.fmean(r['gflops_per_second'] for r in results):.1f} GFLOP/s "
        f"-> {out.relative_to(REPO) if out.is_relative_to(REPO) else out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
