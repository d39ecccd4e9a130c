"""Soak test of `cifarlab serve`: many mixed requests, no 5xx, none lost, bounded memory.

    nohup flock /tmp/cifarlab-cpu.lock .venv/bin/python bench/serve_soak.py > soak.log 2>&1 &

Starts the server (bundled model, or `--model`) as a subprocess on 127.0.0.1 and sends
`--requests` (default 12,000) requests in phases of concurrency 1, 16 and 32, each request
drawn from a fixed mix: a 32x32 PNG, a 1024x768 JPEG photo-like image, a truncated JPEG
(422), a non-image (422), an oversized upload (413), and a `/predict/batch` of 8 PNGs. The
server's resident memory (VmRSS) is sampled every 500 requests. Writes
`reports/bench/serve_soak.json`: `requests`, `status_5xx`, `lost` (connection errors and
timeouts), `rss_start_mb` (after warm-up), `rss_after_2000_mb`, `rss_end_mb`, `rss_growth`
(fraction from the RSS after 2,000 requests to the end), p50/p99 per kind, the RSS samples,
the command, commit, date and hardware. Targets: 0 5xx, 0 lost, growth < 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from cifarlab import runinfo
from cifarlab.checkpoint import write_json_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, start_server, stop_server

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "reports" / "bench" / "serve_soak.json"
TARGET_GROWTH = 0.10
SAMPLE_EVERY = 500
# kind -> (relative weight, expected status)
MIX: dict[str, tuple[int, int]] = {
    "png": (50, 200),
    "jpeg_photo": (15, 200),
    "truncated_jpeg": (10, 422),
    "not_an_image": (10, 422),
    "oversized": (2, 413),
    "batch8": (13, 200),
}


def payloads() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    small = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(small, "PNG")
    # A smooth gradient with noise compresses like a photo (not like pure noise).
    y, x = np.mgrid[0:768, 0:1024]
    photo = np.stack([x / 4, y / 3, (x + y) / 7], axis=-1) % 256 + rng.normal(0, 8, (768, 1024, 3))
    jpeg = io.BytesIO()
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(jpeg, "JPEG", quality=90)
    return {
        "png": small.getvalue(),
        "jpeg_photo": jpeg.getvalue(),
        "truncated_jpeg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "not_an_image": b"this is not an image\n" * 20,
        "oversized": b"\xff\xd8" + bytes(11 * 1024 * 1024),  # over the 10 MB default
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def one(client: httpx.AsyncClient, kind: str, data: dict[str, bytes]) -> tuple[int, float]:
    start = time.perf_counter()
    if kind == "batch8":
        files = [("files", (f"{i}.png", data["png"], "image/png")) for i in range(8)]
        r = await client.post("/predict/batch", files=files)
    else:
        r = await client.post("/predict", files={"file": (f"{kind}.bin", data[kind])})
    return r.status_code, (time.perf_counter() - start) * 1000


async def phase(
    url: str, kinds: list[str], concurrency: int, data: dict[str, bytes], on_done: Any
) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for k in kinds:
        queue.put_nowait(k)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                kind = queue.get_nowait()
                try:
                    status, ms = await one(client, kind, data)
                except (httpx.TransportError, httpx.TimeoutException) as exc:
                    on_done(kind, None, 0.0, type(exc).__name__)
                    continue
                on_done(kind, status, ms, None)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(values, q)), 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=12_000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 32])
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: bundled)")
    ap.add_argument("--out", type=Path, default=OUT_JSON)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.requests < 2_500:
        ap.error("--requests must be at least 2,500 (growth is measured from request 2,000)")

    data = payloads()
    rng = random.Random(args.seed)
    names = list(MIX)
    kinds = rng.choices(names, weights=[MIX[k][0] for k in names], k=args.requests)
    port = free_port()
    env = {**os.environ}
    cmd = [sys.executable, "-m", "cifarlab", "serve", "--port", str(port)]
    if args.model is not None:
        cmd += ["--model", str(args.model)]
    proc = start_server(cmd, port, env)
    url = f"http://127.0.0.1:{port}"
    latencies: dict[str, list[float]] = {k: [] for k in names}
    unexpected: dict[str, int] = {}
    errors: dict[str, int] = {}
    samples: list[dict[str, float]] = []
    counts = {"done": 0, "5xx": 0, "lost": 0}

    def on_done(kind: str, status: int | None, ms: float, error: str | None) -> None:
        counts["done"] += 1
        if status is None:
            counts["lost"] += 1
            errors[error or "?"] = errors.get(error or "?", 0) + 1
        else:
            latencies[kind].append(ms)
            if status >= 500:
                counts["5xx"] += 1
            if status != MIX[kind][1]:
                key = f"{kind}:{status}"
                unexpected[key] = unexpected.get(key, 0) + 1
        if counts["done"] % SAMPLE_EVERY == 0:
            samples.append({"requests": counts["done"], "rss_mb": round(rss_mb(proc.pid), 1)})

    started = time.monotonic()
    try:
        # Warm-up (not counted): every kind once, so lazily loaded code is in memory.
        warm = {k: [] for k in names}  # type: dict[str, list[float]]
        asyncio.run(phase(url, names * 5, 4, data, lambda k, s, ms, e: warm[k].append(ms)))
        rss_start = rss_mb(proc.pid)
        per_phase = len(kinds) // len(args.concurrency)
        for i, c in enumerate(args.concurrency):
            chunk = kinds[
                i * per_phase : (i + 1) * per_phase if i < len(args.concurrency) - 1 else None
            ]
            asyncio.run(phase(url, chunk, c, data, on_done))
        rss_end = rss_mb(proc.pid)
    finally:
        stop_server(proc)
    wall = time.monotonic() - started

    after_2000 = next(s["rss_mb"] for s in samples if s["requests"] >= 2_000)
    growth = (rss_end - after_2000) / after_2000
    result = {
        "benchmark": "serve_soak",
        "command": shlex.join([Path(sys.argv[0]).as_posix().split("/")[-1], *sys.argv[1:]]),
        "git_commit": runinfo.git_sha(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hardware": runinfo.hardware(),
        "model": "bundled" if args.model is None else args.model.name,
        "concurrency": args.concurrency,
        "mix": {k: {"weight": w, "expected_status": s} for k, (w, s) in MIX.items()},
        "requests": counts["done"],
        "status_5xx": counts["5xx"],
        "lost": counts["lost"],
        "lost_by_error": errors,
        "unexpected_status": unexpected,
        "rss_start_mb": round(rss_start, 1),
        "rss_after_2000_mb": after_2000,
        "rss_end_mb": round(rss_end, 1),
        "rss_growth": round(growth, 4),
        "rss_samples": samples,
        "latency_ms": {
            k: {"n": len(v), "p50": pct(v, 50), "p99": pct(v, 99)} for k, v in latencies.items()
        },
        "wall_seconds": round(wall, 1),
        "targets": {"status_5xx": 0, "lost": 0, "rss_growth_below": TARGET_GROWTH},
        "met": counts["5xx"] == 0 and counts["lost"] == 0 and growth < TARGET_GROWTH,
    }
    write_json_atomic(args.out, result)
    print(
        f"{result['requests']} requests in {wall:.0f} s: {counts['5xx']} 5xx, {counts['lost']} "
        f"lost; RSS {rss_start:.0f} MB after warm-up, {after_2000:.0f} MB after 2,000, "
        f"{rss_end:.0f} MB at the end (growth {growth:+.1%}); p50 png "
        f"{statistics.median(latencies['png']):.1f} ms; wrote {args.out}"
    )
    return 0 if result["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
