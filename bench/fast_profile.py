"""Where the time of a fast-training step goes, and raw throughput of a few variants.

    python bench/fast_profile.py --preset quick --steps 6

Times a few training steps of the preset's net on random data (data pipeline included) with
`torch.profiler`, groups self CPU time by operator family (convolution forward/backward,
batch norm, activation, pooling, optimiser, data), and measures images/s for the variants
listed by `--variants` (precision, memory format, crop size). Writes
`reports/bench/fast_training_profile.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cifarlab import fast
from cifarlab.engine import autocast
from cifarlab.models import get_model

REPO = Path(__file__).resolve().parents[1]

FAMILIES = (
    ("conv_backward", ("convolution_backward", "mkldnn_convolution_backward")),
    ("conv_forward", ("convolution", "conv2d", "mkldnn_convolution")),
    ("batch_norm", ("batch_norm", "native_batch_norm")),
    ("activation", ("gelu", "relu")),
    ("pooling", ("max_pool", "adaptive_max_pool")),
    ("optimizer", ("sgd", "_foreach", "lerp", "add_", "mul_", "copy_")),
    ("data", ("index", "permute", "contiguous", "sub", "to_copy", "_to_copy")),
)


def family(name: str) -> str:
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def make_step(cfg: fast.FastConfig, size: int) -> tuple[Any, int]:
    model = get_model("fastnet", **cfg.model_kwargs())
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.85, nesterov=True)
    rng = np.random.default_rng(0)
    n = cfg.batch_size * 2
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    loader = fast.GpuStyleLoader(
        images,
        labels,
        cfg.batch_size,
        cfg.translate,
        0,
        cfg.channels_last,
    )
    ctx = autocast(cfg.precision == "bf16")

    def step() -> None:
        for x, y in loader.epoch(1, size):
            with ctx:
                loss = F.cross_entropy(model(x), y, label_smoothing=0.2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            break

    return step, cfg.batch_size


def images_per_second(cfg: fast.FastConfig, size: int, steps: int) -> float:
    step, bs = make_step(cfg, size)
    step()  # warm-up: oneDNN primitive creation
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return bs * steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument(
        "--variants",
        default="base,contiguous,24px,bf16",
        help="comma list of: base, contiguous, 24px, 28px, bf16",
    )
    p.add_argument("--out", type=Path, default=REPO / "reports/bench/fast_training_profile.json")
    args = p.parse_args(argv)
    cfg = fast.get_preset(args.preset, batch_size=args.batch_size)

    step, bs = make_step(cfg, 32)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        total = time.perf_counter() - t0
    split: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        split[family(evt.key)] += evt.self_cpu_time_total / 1e6
    prof_total = sum(split.values())
    shares = {k: round(v / prof_total, 3) for k, v in sorted(split.items(), key=lambda kv: -kv[1])}
    print(f"profiled {args.steps} steps of {bs} at 32px: {bs * args.steps / total:.0f} img/s")
    for k, v in shares.items():
        print(f"  {k:14s} {100 * v:5.1f}%")

    variants: dict[str, float] = {}
    for v in args.variants.split(","):
        vcfg, size = cfg, 32
        if v == "contiguous":
            vcfg = fast.get_preset(args.preset, batch_size=args.batch_size, channels_last=False)
        elif v.endswith("px"):
            size = int(v[:-2])
        elif v == "bf16":
            vcfg = fast.get_preset(args.preset, batch_size=args.batch_size, precision="bf16")
        elif v != "base":
            raise SystemExit(f"unknown variant {v!r}")
        # bf16 without native support is an order of magnitude slower: time fewer steps.
        n = 1 if v == "bf16" else args.steps
        variants[v] = round(images_per_second(vcfg, size, n), 1)
        print(f"variant {v:11s} {variants[v]:7.1f} img/s", flush=True)

    flops = {s: fast.flops_per_image(cfg, s) for s in (24, 28, 32)}
    result = {
        "preset": args.preset,
        "widths": list(cfg.widths),
        "batch_size": bs,
        "time_share_32px": shares,
        "images_per_second": variants,
        "gflop_per_train_image": {str(k): round(v / 1e9, 4) for k, v in flops.items()},
        "gflops_per_second_base": round(variants.get("base", 0) * flops[32] / 1e9, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/fast_profile.py", *(argv or sys.argv[1:])]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
