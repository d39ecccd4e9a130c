"""ONNX Runtime thread spinning, measured on the serving model: off, always, or inside calls.

    .venv/bin/python bench/ort_spin.py    # -> reports/bench/ort_spin.json

For each setting of `session.intra_op.allow_spinning` / `session.force_spinning_stop`, runs
the model on batches of 1 and 32 with a 2 ms pause between calls (as between requests), and
records the median wall time per call and the process CPU time per call (spinning threads
burn CPU during the pauses, which the event loop of `cifarlab serve` would otherwise use).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cifarlab import runinfo
from cifarlab.serve.predictor import BUNDLED_MODEL, INPUT_NAME, preprocess

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"off": ("0", "0"), "always": ("1", "0"), "inside_calls": ("1", "1")}


def measure(model: Path, spin: str, stop: str, batch: int, calls: int) -> dict[str, float]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.force_spinning_stop", stop)
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    x = preprocess(images)
    for _ in range(10):
        session.run(None, {INPUT_NAME: x})
    wall = []
    cpu0 = time.process_time()
    for _ in range(calls):
        time.sleep(0.002)
        t = time.perf_counter()
        session.run(None, {INPUT_NAME: x})
        wall.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu0
    return {
        "batch": batch,
        "median_ms": round(float(np.median(wall)) * 1000, 3),
        "cpu_ms_per_call": round(cpu / calls * 1000, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    p.add_argument("--out", type=Path, default=REPO / "reports" / "bench" / "ort_spin.json")
    args = p.parse_args()
    results = {
        name: [measure(args.model, spin, stop, 1, 200), measure(args.model, spin, stop, 32, 40)]
        for name, (spin, stop) in SETTINGS.items()
    }
    out = {"benchmark": "ort_spin", "model": args.model.name, "results": results}
    runinfo.write_result(args.out, out)  # + command as run, git, date, hardware, versions
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
