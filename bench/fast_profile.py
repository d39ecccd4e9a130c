"""Where the time of a fast-training step goes, per layer and per resolution.

    python bench/fast_profile.py --preset fast94 --steps 3

Builds the preset's training plan (`cifarlab.fast.plan`: the net whitened from real training
images, its loader, optimiser and hooks) and runs its steps through the engine's own
`train_one_epoch` at the machine's best native precision, once per crop size the preset
trains at. For each size it records images/s and achieved GFLOP/s over `--steps` timed steps
(after one warm-up step), then profiles two more steps with `torch.profiler` and groups self
CPU time by operator family and by convolution shape, with each convolution's achieved
GFLOP/s (forward and backward). Writes `reports/bench/fast_training_layers_<preset>.json`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from cifarlab import engine, fast
from cifarlab.constants import IMAGE_SIZE
from cifarlab.io import write_json_atomic
from cifarlab.runinfo import git_sha, hardware

REPO = Path(__file__).resolve().parents[1]

FAMILIES = (
    ("conv_backward", ("convolution_backward",)),
    ("conv_forward", ("convolution", "conv2d")),
    ("batch_norm", ("batch_norm",)),
    ("activation", ("gelu", "relu")),
    ("pooling", ("max_pool",)),
    ("optimizer", ("sgd", "_foreach", "lerp", "mm", "matmul", "norm", "add_", "mul_")),
    ("dtype_copies", ("to_copy", "copy_", "_to_copy")),
    ("data", ("index", "permute", "contiguous", "sub", "randperm", "where")),
)


def family(name: str) -> str:
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def conv_gflop(shapes: list[list[int]], backward: bool) -> float | None:
    """FLOPs of one 3x3-or-smaller conv call from its profiled input shapes (None if unknown)."""
    try:
        if backward:  # convolution_backward(grad_out, input, weight, ...)
            (b, k, h, w), (_, c, _, _), (_, _, kh, kw) = shapes[0], shapes[1], shapes[2]
            return 2 * 2 * b * h * w * k * c * kh * kw / 1e9  # input grad + weight grad
        (b, c, hi, wi), (k, _, kh, kw) = shapes[0], shapes[1]
        return 2 * b * hi * wi * k * c * kh * kw / 1e9  # "same" padding: output = input size
    except (ValueError, IndexError):
        return None


def profile_size(cfg: fast.FastConfig, train_data: Any, size: int, steps: int) -> dict[str, Any]:
    p = fast.plan(cfg, train_data)
    bf16 = cfg.precision == "bf16"

    def run(n: int) -> float:
        t0 = time.perf_counter()
        engine.train_one_epoch(
            p.model,
            p.optimizer,
            p.criterion,
            itertools.islice(p.train.epoch(1, size), n),
            epoch=1,
            steps=n,
            hooks=p.hooks,
            bf16=bf16,
        )
        return time.perf_counter() - t0

    run(1)  # warm-up: oneDNN builds its kernels for these shapes
    seconds = run(steps)
    ips = steps * cfg.batch_size / seconds
    gflop_per_image = fast.flops_per_image(cfg, size) / 1e9
    with torch.profiler.profile(record_shapes=True) as prof:
        run(2)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    fams: dict[str, float] = defaultdict(float)
    convs = []
    for e in events:
        fams[family(e.key)] += e.self_cpu_time_total / total
        backward = e.key == "aten::convolution_backward"
        if backward or e.key == "aten::mkldnn_convolution":
            gf = conv_gflop(e.input_shapes, backward)
            ms = e.self_cpu_time_total / 1e3 / 2  # per step
            convs.append(
                {
                    "op": "backward" if backward else "forward",
                    "input_shapes": [s for s in e.input_shapes if s][:3],
                    "calls_per_step": e.count // 2,
                    "ms_per_step": round(ms, 1),
                    "share": round(e.self_cpu_time_total / total, 3),
                    "gflops_per_second": round(gf * (e.count // 2) / ms * 1e3, 1) if gf else None,
                }
            )
    return {
        "size": size,
        "images_per_second": round(ips, 1),
        "gflop_per_train_image": round(gflop_per_image, 4),
        "gflops_per_second": round(ips * gflop_per_image, 1),
        "time_share": {k: round(v, 3) for k, v in sorted(fams.items(), key=lambda kv: -kv[1])},
        "convolutions": sorted(convs, key=lambda c: -c["share"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fast94")
    p.add_argument("--steps", type=int, default=3, help="timed steps per crop size")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from cifarlab import data

    chosen = engine.choose_precision(args.precision, engine.cpu_flags()).value
    cfg = fast.get_preset(args.preset, precision=chosen, progress=False)
    n = cfg.batch_size * (args.steps + 3)
    images, labels = data.load_split("train_full")
    train_data = (images[:n], labels[:n])
    sizes = sorted({IMAGE_SIZE, cfg.low_res} if cfg.low_res_epochs else {IMAGE_SIZE})
    result: dict[str, Any] = {
        "preset": args.preset,
        "widths": list(cfg.widths),
        "batch_size": cfg.batch_size,
        "precision": chosen,
        "threads": torch.get_num_threads(),
        "sizes": [],
    }
    for size in sorted(sizes, reverse=True):
        r = profile_size(cfg, train_data, size, args.steps)
        result["sizes"].append(r)
        print(
            f"{size}px: {r['images_per_second']:.0f} img/s, {r['gflops_per_second']:.0f} GFLOP/s",
            flush=True,
        )
        for c in r["convolutions"][:6]:
            print(f"  {100 * c['share']:5.1f}% {c['op']:8s} {c['input_shapes']}", flush=True)
    out = args.out or REPO / "reports" / "bench" / f"fast_training_layers_{args.preset}.json"
    import shlex
    from datetime import UTC, datetime

    result.update(
        hardware=hardware(),
        torch=torch.__version__,
        git_commit=git_sha(),
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        command=shlex.join(["python", "bench/fast_profile.py", *(argv or sys.argv[1:])]),
    )
    write_json_atomic(out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
