"""MobileNetV2 feature-extraction throughput: torch (fp32/bf16, channels_last) vs ONNX Runtime.

    flock /tmp/cifarlab-cpu.lock .venv/bin/python bench/transfer_features.py --images 1000

Runs the frozen backbone of `mobilenet_v2_transfer` (ImageNet weights, 32->96 px resize) over
the first `--images` test images in batches of `--batch-size` and reports images/s per
setting, plus how far each setting's pooled features are from fp32 contiguous (max absolute
and relative L2 difference: whether a cache built that way is equivalent).
Writes `reports/bench/transfer_features.json` (command, hardware, date, results);
`TransferConfig.feature_dtype` follows these numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--weights", default=None, help="ImageNet .pth (default: env or hub cache)")
    ap.add_argument("--out", default=str(REPO / "reports" / "bench" / "transfer_features.json"))
    args = ap.parse_args()

    from cifarlab.data import load_split
    from cifarlab.models import get_model
    from cifarlab.preprocess import normalize
    from cifarlab.runinfo import write_result

    images, _ = load_split("test")
    x = torch.from_numpy(normalize(images[: args.images]))
    model = get_model("mobilenet_v2_transfer", weights=args.weights).eval()
    settings = [("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True)]
    results = []
    ref: torch.Tensor | None = None
    for dtype, channels_last in settings:
        m = model.to(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        outs = []
        with torch.inference_mode():
            m.forward_features(x[:8])  # warm-up
            t0 = time.perf_counter()
            for i in range(0, len(x), args.batch_size):
                xb = x[i : i + args.batch_size]
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    outs.append(m.forward_features(xb).float())
            seconds = time.perf_counter() - t0
        feats = torch.cat(outs)
        if ref is None:
            ref = feats
        row = {
            "dtype": dtype,
            "backend": "torch",
            "channels_last": channels_last,
            "images_per_second": round(len(x) / seconds, 1),
            "seconds": round(seconds, 2),
            "max_abs_diff_vs_fp32": float((feats - ref).abs().max()),
            "rel_l2_diff_vs_fp32": float((feats - ref).norm() / ref.norm()),
        }
        print(json.dumps(row), flush=True)
        results.append(row)

    # onnxruntime runs the same backbone exported to ONNX (what `cifarlab transfer` uses).
    from cifarlab.transfer import _onnx_feature_session

    model = model.to(memory_format=torch.contiguous_format)
    session = _onnx_feature_session(model)
    xn = x.numpy()
    session.run(None, {"x": xn[:8]})  # warm-up
    t0 = time.perf_counter()
    feats = np.concatenate(
        [
            session.run(None, {"x": xn[i : i + args.batch_size]})[0]
            for i in range(0, len(xn), args.batch_size)
        ]
    )
    seconds = time.perf_counter() - t0
    assert ref is not None
    diff = torch.from_numpy(feats) - ref
    row = {
        "dtype": "float32",
        "backend": "onnxruntime",
        "channels_last": False,
        "images_per_second": round(len(x) / seconds, 1),
        "seconds": round(seconds, 2),
        "max_abs_diff_vs_fp32": float(diff.abs().max()),
        "rel_l2_diff_vs_fp32": float(diff.norm() / ref.norm()),
    }
    print(json.dumps(row), flush=True)
    results.append(row)

    out = {
        "benchmark": "mobilenet_v2 frozen-backbone feature extraction (96x96 input)",
        "threads": torch.get_num_threads(),
        "images": len(x),
        "batch_size": args.batch_size,
        "results": results,
    }
    write_result(args.out, out)  # + command as run, git, date, hardware, versions
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
