"""Load benchmark of the serving stack: framework floor, model alone, and `/predict`.

    nohup flock /tmp/cifarlab-cpu.lock .venv/bin/python bench/serve_load.py > serve_load.log 2>&1 &

In one run, with the bundled model (or `--model`), on this machine's cores:

1. **floor**: a bare FastAPI endpoint that takes the same multipart upload (`UploadFile`) and
   does no decoding or inference, at concurrency 32: what the web framework alone can do.
2. **model**: ONNX Runtime alone on batches of 32 normalised images (images/s), in process.
3. **ceiling** = 1 / (1/floor + 1/model): framework and model share the same cores, so a
   service cannot beat it.
4. **/predict** of `cifarlab serve` with a 32x32 PNG at concurrency 1, 8 and 32 (req/s, p50,
   p99, errors), plus a one-call-per-request service (`--max-batch-size 1`) at 32 for
   comparison with dynamic batching.

Every quantity is measured `--repeats` times (default 5) in interleaved rounds and the medians
are reported (each round is kept in the JSON): on a shared machine a slow spell then affects the
floor, the model and the service alike instead of skewing their ratio.

Servers run as uvicorn subprocesses on 127.0.0.1 (loopback only); the load comes from `wrk`
(Debian package `wrk`) with a Lua script that posts the multipart body. Every run is bounded
in time. Results go to `reports/bench/serving.json` (with `cifarlab.runinfo`'s provenance
block); the table in `docs/serving.md` and the README's summary are then re-rendered from it
by `cifarlab.render` (`cifarlab render`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab import runinfo

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "reports" / "bench" / "serving.json"
BOUNDARY = "cifarlabbenchboundary"
TARGET_CEILING_FRACTION = 0.80  # at concurrency 32
TARGET_P99_MS = 150.0  # at concurrency 32
TARGET_P50_C1_MS = 4.0

# wrk prints one JSON line at the end (latencies in microseconds).
LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=%(boundary)s"
local f = io.open("%(body)s", "rb")
wrk.body = f:read("*all")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "mean_us": %%f, "max_us": %%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max))
end
"""

FLOOR_APP = """
from fastapi import FastAPI, UploadFile
import uvicorn

app = FastAPI()


@app.post("/predict")
async def upload(file: UploadFile) -> dict:
    data = await file.read()
    return {"size": len(data)}


uvicorn.run(app, host="127.0.0.1", port=%(port)d, access_log=False, log_level="warning")
"""


def png_32() -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def multipart_body(data: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not start in {timeout} s")


def start_server(cmd: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(port, proc)
    except Exception:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise RuntimeError(f"{' '.join(cmd)} failed: {err.decode()[-2000:]}") from None
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def run_wrk(port: int, lua: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        f"http://127.0.0.1:{port}/predict",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    match = re.search(r"^WRKJSON (\{.*\})$", out.stdout, re.MULTILINE)
    if not match:
        raise RuntimeError(f"unexpected wrk output:\n{out.stdout}\n{out.stderr}")
    raw = json.loads(match.group(1))
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "concurrency": concurrency,
        "seconds": round(raw["duration_us"] / 1e6, 2),
        "requests": raw["requests"],
        "req_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "mean_ms": round(raw["mean_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "errors": errors,
        "error_kinds": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout")},
    }


def median(values: list[float]) -> float:
    return round(float(statistics.median(values)), 3)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One load result made of the per-field medians of repeated runs (errors: the sum)."""
    out = dict(runs[0])
    for key in ("req_per_s", "p50_ms", "p90_ms", "p99_ms", "mean_ms"):
        out[key] = median([r[key] for r in runs])
    out["max_ms"] = max(r["max_ms"] for r in runs)
    out["requests"] = sum(r["requests"] for r in runs)
    out["seconds"] = round(sum(r["seconds"] for r in runs), 2)
    out["errors"] = sum(r["errors"] for r in runs)
    out["error_kinds"] = {k: sum(r["error_kinds"][k] for r in runs) for k in out["error_kinds"]}
    out["runs"] = len(runs)
    return out


def ceiling_of(floor: dict[str, Any], model: dict[str, Any]) -> float:
    """Framework and model share the cores: 1 / (1/floor + 1/model) requests per second."""
    return 1 / (1 / floor["req_per_s"] + 1 / model["images_per_s"])


def load(port: int, lua: Path, concurrency: int, seconds: float, warmup: float) -> dict[str, Any]:
    if warmup > 0:
        run_wrk(port, lua, concurrency, warmup)
    return run_wrk(port, lua, concurrency, seconds)


def model_alone(model: Path, threads: int, seconds: float, batch: int = 32) -> dict[str, Any]:
    """ONNX Runtime on normalised batches of `batch`, in this process (images/s)."""
    from cifarlab.serve.predictor import Predictor, preprocess

    predictor = Predictor(model, threads=threads)
    images = np.random.default_rng(1).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    x = preprocess(images)
    for _ in range(5):
        predictor.infer(x)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predictor.infer(x)
        calls += 1
    elapsed = time.perf_counter() - start
    one = []
    for _ in range(50):
        t = time.perf_counter()
        predictor.infer(x[:1])
        one.append(time.perf_counter() - t)
    return {
        "batch_size": batch,
        "images_per_s": round(calls * batch / elapsed, 1),
        "ms_per_batch": round(elapsed / calls * 1000, 2),
        "batch1_median_ms": round(float(np.median(one)) * 1000, 3),
        "model": predictor.info.name,
        "model_version": predictor.info.version,
        "tta": predictor.info.tta,
    }


def tools() -> dict[str, Any]:
    """Versions of the serving stack and the load generator (the rest is in `provenance`)."""
    import fastapi
    import uvicorn

    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
        "load_generator": wrk.strip() or "wrk",
    }


def update_docs() -> None:
    """Re-render the docs' number blocks (the table in docs/serving.md) from the JSON."""
    from cifarlab.render import render

    for path in render(REPO):
        print(f"rendered {path}")


def main() -> int:
    from cifarlab.serve.predictor import BUNDLED_MODEL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    p.add_argument("--seconds", type=float, default=10.0, help="per measured load run")
    p.add_argument(
        "--repeats", type=int, default=5, help="interleaved rounds; the medians are reported"
    )
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured run before each")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = auto)")
    p.add_argument("--max-wait-ms", type=float, default=None, help="server batching wait")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--no-naive", action="store_true", help="skip the batch-size-1 comparison")
    p.add_argument("--out", type=Path, default=OUT_JSON)
    p.add_argument("--no-docs", action="store_true", help="do not re-render the docs")
    p.add_argument(
        "--render", action="store_true", help="only re-render the docs from the committed JSON"
    )
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.render:
        update_docs()
        return 0
    if shutil.which("wrk") is None:
        print("wrk not found: install it (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    body = multipart_body(png_32())
    with tempfile.TemporaryDirectory() as tmpdir, contextlib.ExitStack() as servers:
        body_file = Path(tmpdir) / "body.bin"
        body_file.write_bytes(body)
        lua = Path(tmpdir) / "post.lua"
        lua.write_text(LUA % {"boundary": BOUNDARY, "body": body_file})
        floor_py = Path(tmpdir) / "floor_app.py"

        def serve_cmd(port: int, *extra: str) -> list[str]:
            cmd = [sys.executable, "-m", "cifarlab", "serve", "--port", str(port)]
            cmd += ["--model", str(args.model), "--threads", str(args.threads), *extra]
            if args.max_wait_ms is not None:
                cmd += ["--max-wait-ms", str(args.max_wait_ms)]
            return cmd

        def server(cmd: list[str], port: int) -> None:
            servers.callback(stop_server, start_server(cmd, port, env))

        # All servers stay up (idle ones cost nothing) and the measurements are interleaved
        # round by round, so that a slow spell of a shared machine hits every quantity alike
        # instead of skewing the ratio between the floor and the service.
        floor_port = free_port()
        floor_py.write_text(FLOOR_APP % {"port": floor_port})
        server([sys.executable, str(floor_py)], floor_port)
        port = free_port()
        server(serve_cmd(port), port)
        naive_port = None
        if not args.no_naive:
            naive_port = free_port()
            server(serve_cmd(naive_port, "--max-batch-size", "1"), naive_port)

        rounds: list[dict[str, Any]] = []
        for r in range(args.repeats):
            one: dict[str, Any] = {"floor": load(floor_port, lua, 32, args.seconds, args.warmup)}
            one["model_alone"] = model_alone(args.model, args.threads, args.seconds)
            one["predict"] = [
                load(port, lua, c, args.seconds, args.warmup) for c in args.concurrency
            ]
            if naive_port is not None:
                one["naive"] = load(naive_port, lua, 32, args.seconds, args.warmup)
            print(f"round {r + 1}/{args.repeats}", json.dumps(one), flush=True)
            rounds.append(one)

    floor = median_run([r["floor"] for r in rounds])
    model = {
        **rounds[0]["model_alone"],
        "images_per_s": median([r["model_alone"]["images_per_s"] for r in rounds]),
        "ms_per_batch": median([r["model_alone"]["ms_per_batch"] for r in rounds]),
        "batch1_median_ms": median([r["model_alone"]["batch1_median_ms"] for r in rounds]),
    }
    ceiling = ceiling_of(floor, model)
    predict = [median_run([r["predict"][i] for r in rounds]) for i in range(len(args.concurrency))]
    naive = median_run([r["naive"] for r in rounds]) if naive_port is not None else None

    # The ratio of each round on its own, to show how much of the median is the machine's noise.
    per_round = [
        round(p["req_per_s"] / ceiling_of(r["floor"], r["model_alone"]), 3)
        for r in rounds
        for p in r["predict"]
        if p["concurrency"] == 32
    ]
    by_c = {r["concurrency"]: r for r in predict}
    c32, c1 = by_c.get(32), by_c.get(1)
    targets = {
        "c32_fraction_of_ceiling": round(c32["req_per_s"] / ceiling, 3) if c32 else None,
        "c32_fraction_met": bool(c32 and c32["req_per_s"] >= TARGET_CEILING_FRACTION * ceiling),
        "c32_p99_ms": c32["p99_ms"] if c32 else None,
        "c32_p99_met": bool(c32 and c32["p99_ms"] <= TARGET_P99_MS),
        "c1_p50_ms": c1["p50_ms"] if c1 else None,
        "c1_p50_met": bool(c1 and c1["p50_ms"] <= TARGET_P50_C1_MS),
        "c32_fraction_per_round": per_round,
        "c32_target": TARGET_CEILING_FRACTION,
        "c32_p99_target_ms": TARGET_P99_MS,
        "c1_p50_target_ms": TARGET_P50_C1_MS,
    }
    result = {
        "benchmark": "serve_load",
        "tools": tools(),
        "image": "32x32 RGB PNG, multipart field 'file'",
        "body_bytes": len(body),
        "settings": {
            "ort_threads": args.threads,
            "max_wait_ms": args.max_wait_ms,
            "seconds_per_run": args.seconds,
            "repeats": args.repeats,
            "warmup_seconds": args.warmup,
            "wrk_threads": 1,
        },
        "floor": floor,
        "model_alone": model,
        "ceiling_req_per_s": round(ceiling, 1),
        "predict": predict,
        "naive": naive,
        "targets": targets,
        "rounds": rounds,
    }
    runinfo.write_result(args.out, result)
    print(f"wrote {args.out}")
    if not args.no_docs:
        update_docs()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
