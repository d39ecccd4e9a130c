"""Fast-recipe training throughput through the engine against the pre-engine code, in one run.

    flock /tmp/cifarlab-cpu.lock .venv/bin/python bench/engine_overhead.py --rounds 3

Checks the pre-refactor commit (`--before`, default 03cb540, the last commit with the
separate fast-train loop) and the engine commit (`--after`, default HEAD) out into temporary
git worktrees and trains the `fast94` and
`quick` presets for `--steps` optimizer steps at full resolution with both code versions, in
fresh processes, interleaved round by round (the order alternates), same precision, same
threads, same synthetic data. Each process trains two epochs of `--steps` steps and reports
the images/s of the second (warm) epoch from its metrics.csv, so model build, whitening and
first-use kernel setup are excluded. The JSON holds
every measurement, the per-preset median ratio after/before and how many rounds stayed
within the 3% target. Writes `reports/bench/engine_overhead.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cifarlab import runinfo  # noqa: E402
from cifarlab.io import write_json_atomic  # noqa: E402

# Runs inside each timed process, against whichever `cifarlab` is first on sys.path.
DRIVER = """
import csv, json, sys, dataclasses, tempfile
from pathlib import Path
import numpy as np
import cifarlab
from cifarlab import fast
assert cifarlab.__file__.startswith(sys.argv[1]), cifarlab.__file__
preset, steps, precision, threads = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
base = fast.get_preset(preset)
n = base.batch_size * steps
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
labels = rng.integers(0, 10, n)
over = dict(epochs=2.0, low_res_epochs=0, threads=threads, whiten_samples=1000)
fields = {f.name for f in dataclasses.fields(fast.FastConfig)}
if "precision" in fields:
    cfg = fast.get_preset(preset, precision=precision, progress=False, **over)
else:
    cfg = fast.get_preset(preset, bf16=precision == "bf16", **over)
with tempfile.TemporaryDirectory() as tmp:
    fast.train(cfg, (images, labels), None, run_dir=Path(tmp))
    rows = list(csv.DictReader(open(Path(tmp) / "metrics.csv")))
seconds = float(rows[1]["seconds"])  # epoch 2: warm (oneDNN primitives built in epoch 1)
print(json.dumps({"images_per_second": round(n / seconds, 1), "epoch2_seconds": seconds}))
"""


def measure(src: Path, preset: str, steps: int, precision: str, threads: int) -> dict[str, float]:
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(src), preset, str(steps), precision, str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"timing {preset} in {src} failed:\n{out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="03cb540", help="pre-engine commit")
    ap.add_argument("--after", default="HEAD", help="engine commit")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--presets", default="fast94,quick")
    ap.add_argument("--steps", default="fast94=6,quick=16", help="optimizer steps per preset")
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "engine_overhead.json")
    args = ap.parse_args()
    steps = {k: int(v) for k, v in (kv.split("=") for kv in args.steps.split(","))}
    presets = args.presets.split(",")
    before = git("rev-parse", args.before)
    after = git("rev-parse", args.after)
    # Both versions are checked out from commits, so edits to this tree cannot leak in.
    with tempfile.TemporaryDirectory(prefix="cifarlab-overhead-") as tmp:
        trees = {"before": Path(tmp) / "before", "after": Path(tmp) / "after"}
        for name, commit in (("before", before), ("after", after)):
            git("worktree", "add", "--detach", str(trees[name]), commit)
        try:
            versions = {name: tree / "src" for name, tree in trees.items()}
            rounds = []
            for r in range(args.rounds):
                order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
                row: dict[str, dict[str, dict[str, float]]] = {p: {} for p in presets}
                for p in presets:
                    for v in order:
                        row[p][v] = measure(versions[v], p, steps[p], args.precision, args.threads)
                        print(f"round {r} {p} {v}: {row[p][v]['images_per_second']} img/s")
                rounds.append({"order": order, **row})
        finally:
            for tree in trees.values():
                git("worktree", "remove", "--force", str(tree))
    summary = {}
    for p in presets:
        ratios = [
            rd[p]["after"]["images_per_second"] / rd[p]["before"]["images_per_second"]
            for rd in rounds
        ]
        summary[p] = {
            "ratio_after_over_before": [round(x, 4) for x in ratios],
            "median_ratio": round(statistics.median(ratios), 4),
            "rounds_within_3pct": sum(x >= 0.97 for x in ratios),
            "rounds": len(ratios),
        }
    result = {
        "what": "fast-recipe training images/s, engine (after) vs separate loop (before)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": after,
        "before_commit": before,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hardware": runinfo.hardware(),
        "precision": args.precision,
        "threads": args.threads,
        "steps": steps,
        "data": "synthetic uint8 images, full 32x32 resolution (low_res_epochs=0)",
        "summary": summary,
        "rounds": rounds,
    }
    write_json_atomic(args.out, result)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
