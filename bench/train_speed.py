"""Training-step throughput of the seed CNNs: fp32 vs bf16 autocast, contiguous vs channels_last.

    flock /tmp/cifarlab-cpu.lock .venv/bin/python bench/train_speed.py --steps 15

Writes `reports/bench/train_speed.json` (command, hardware, date, images/s per setting). The
engine's defaults (`TrainConfig.bf16`, `.channels_last`) follow these numbers.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from cifarlab import runinfo
from cifarlab.engine import prepare_batch
from cifarlab.models import get_model
from cifarlab.transforms import get_preset


def bench(model_name: str, bf16: bool, channels_last: bool, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = get_model(model_name)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    augment = get_preset("keras_aug" if model_name == "augmented_cnn" else "none")
    x = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        params = augment.sample_params(batch) if augment is not None else None
        xb = prepare_batch(x, augment, params, channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(xb)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: allocator, oneDNN primitive caches
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default="reports/bench/train_speed.json")
    args = ap.parse_args()
    results = []
    for name in ("baseline_cnn", "augmented_cnn"):
        for bf16 in (False, True):
            for cl in (False, True):
                ips = bench(name, bf16, cl, args.steps, args.batch)
                results.append(
                    {"model": name, "bf16": bf16, "channels_last": cl, "images_per_s": round(ips)}
                )
                print(results[-1], flush=True)
    out = {
        "benchmark": "train_speed",
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch,
        "steps": args.steps,
        "results": results,
    }
    runinfo.write_result(args.out, out)  # + command as run, git, date, hardware, versions


if __name__ == "__main__":
    main()
