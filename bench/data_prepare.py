"""How long `prepare` takes from the real files (cold) and on an existing cache (warm).

    flock /tmp/cifarlab-cpu.lock .venv/bin/python bench/data_prepare.py --repeats 3

Cold: folder source -> verified, parsed, split cache in a fresh temp dir. Warm: a second
`prepare` that re-hashes the cache against its manifest. Also times `load_split` per split.
Source: `--source`, else `$CIFARLAB_DATA_SOURCE`, else `../shared/datasets/cifar-10-batches-bin`.
Writes `reports/bench/data_prepare.json` (with the `cifarlab.runinfo` provenance block).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from cifarlab import data, runinfo

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=REPO / "reports" / "bench" / "data_prepare.json"
    )
    args = parser.parse_args()
    source = args.source or Path(
        os.environ.get(
            data.ENV_SOURCE, REPO.parent / "shared" / "datasets" / "cifar-10-batches-bin"
        )
    )

    cold, warm = [], []
    loads: dict[str, list[float]] = {s: [] for s in data.SPLITS}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            run = partial(data.prepare, source, tmp, progress=False)
            cold.append(timed(run))
            warm.append(timed(run))
            for split in data.SPLITS:
                loads[split].append(timed(partial(data.load_split, split, tmp)))

    def summary(xs: list[float]) -> dict[str, float]:
        return {"median_s": round(statistics.median(xs), 3), "min_s": round(min(xs), 3)}

    result = {
        "benchmark": "data_prepare",
        "repeats": args.repeats,
        "note": "shared 2-core machine; run under the CPU lock so no other heavy job overlaps",
        "prepare_cold": summary(cold),
        "prepare_warm_verify": summary(warm),
        "load_split": {s: summary(v) for s, v in loads.items()},
    }
    print(json.dumps(runinfo.write_result(args.out, result), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
