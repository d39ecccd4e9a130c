#!/usr/bin/env bash
# Build the serving image, run it on 127.0.0.1, check /health, /predict, /ui, the non-root user
# and the HEALTHCHECK, then remove the container. Exits non-zero on any failure.
#
#   scripts/docker-smoke.sh                  # docker if an engine answers, else podman
#   ENGINE=podman scripts/docker-smoke.sh    # force one
#   SMOKE_JSON=reports/bench/docker-smoke.json scripts/docker-smoke.sh   # also write a record
#
# Without a Docker engine (as on the project's CPU machines) it prepares podman and a local
# `python:3.11-slim` stand-in with ../shared/tools/container-base.sh first. The image tag is
# IMAGE (default cifarlab-api:smoke); the image is kept so that it can be run again.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-cifarlab-api:smoke}
NAME=cifarlab-smoke-$$
ENGINE=${ENGINE:-}
if [ -z "$ENGINE" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
fi

say() { printf '[docker-smoke] %s\n' "$*"; }
fail() { say "FAIL: $*"; exit 1; }

build_args=()
if [ "$ENGINE" = podman ]; then
  tools=../shared/tools/container-base.sh
  [ -x "$tools" ] || fail "no Docker engine and $tools not found; install Docker or podman"
  "$tools"
  export CONTAINERS_CONF=${CONTAINER_WORK:-/var/tmp/cifarlab-containers}/containers.conf
  # The base image is local; --format docker keeps HEALTHCHECK (OCI images drop it).
  build_args=(--pull=never --format docker)
fi
[ -f src/cifarlab/serve/models/default.onnx ] \
  || fail "src/cifarlab/serve/models/default.onnx is missing; the image bundles it"

say "building $IMAGE with $ENGINE"
start=$(date +%s)
"$ENGINE" build "${build_args[@]}" -t "$IMAGE" .
build_seconds=$(( $(date +%s) - start ))

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
tmp=$(mktemp -d)
cleanup() {
  "$ENGINE" rm -f "$NAME" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

say "running $NAME on 127.0.0.1:$port"
"$ENGINE" run -d --name "$NAME" -p "127.0.0.1:$port:8000" "$IMAGE" >/dev/null
base="http://127.0.0.1:$port"

ready=""
for _ in $(seq 1 60); do
  if curl -fsS "$base/health" -o "$tmp/health.json" 2>/dev/null; then ready=1; break; fi
  if [ "$("$ENGINE" inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null)" != true ]; then
    "$ENGINE" logs "$NAME" | tail -20
    fail "the container exited before /health answered"
  fi
  sleep 1
done
[ -n "$ready" ] || { "$ENGINE" logs "$NAME" | tail -20; fail "/health did not answer 200 within 60 s"; }
say "/health: $(head -c 300 "$tmp/health.json")"

# A 64x64 PNG (red square on blue) written with the standard library only.
python3 - "$tmp/probe.png" <<'PY'
import struct, sys, zlib
w = h = 64
rows = b"".join(
    b"\x00" + b"".join(b"\xdc\x28\x28" if 16 <= x < 48 and 16 <= y < 48 else b"\x28\x46\xc8" for x in range(w))
    for y in range(h)
)
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
curl -fsS -F "file=@$tmp/probe.png;type=image/png" "$base/predict" -o "$tmp/predict.json" \
  || fail "/predict did not answer 200"
python3 - "$tmp/predict.json" <<'PY' || fail "/predict answered an unexpected body"
import json, math, sys
body = json.load(open(sys.argv[1]))
probs = body["probabilities"]
assert len(probs) == 10 and abs(sum(probs.values()) - 1) < 1e-3, probs
assert body["predicted_class"] in probs and math.isclose(body["confidence"], max(probs.values()), rel_tol=1e-6)
print(f"[docker-smoke] /predict: {body['predicted_class']} ({body['confidence']:.3f})")
PY

# Hostile input must be a 4xx with a JSON detail, and the server must stay up.
printf 'not an image' > "$tmp/bad.png"
code=$(curl -sS -o "$tmp/bad.json" -w '%{http_code}' -F "file=@$tmp/bad.png;type=image/png" "$base/predict")
[ "$code" = 422 ] || fail "a text file gave HTTP $code, expected 422"
say "/predict with a text file: $code $(cat "$tmp/bad.json")"
curl -fsS "$base/ui" | grep -q '<title>' || fail "/ui did not serve the page"
curl -fsS "$base/health" >/dev/null || fail "/health failed after bad input"

uid=$("$ENGINE" exec "$NAME" id -u)
[ "$uid" != 0 ] || fail "the container runs as root"
"$ENGINE" exec "$NAME" python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
  || fail "torch is installed in the serving image"
if [ "$ENGINE" = podman ]; then
  "$ENGINE" healthcheck run "$NAME" || fail "the image HEALTHCHECK failed"
  health=healthy
else
  health=""
  for _ in $(seq 1 60); do
    health=$("$ENGINE" inspect -f '{{.State.Health.Status}}' "$NAME")
    [ "$health" = healthy ] && break
    sleep 1
  done
  [ "$health" = healthy ] || fail "the HEALTHCHECK status is '$health'"
fi

size=$("$ENGINE" image inspect -f '{{.Size}}' "$IMAGE")
size_mb=$(( size / 1000000 ))
say "OK: image $IMAGE is ${size_mb} MB, built in ${build_seconds} s, runs as uid $uid, HEALTHCHECK $health"
if [ -n "${SMOKE_JSON:-}" ]; then
  mkdir -p "$(dirname "$SMOKE_JSON")"
  # The record goes through cifarlab.runinfo (command, git commit, date, hardware, versions).
  py=.venv/bin/python; [ -x "$py" ] || py=python3
  PYTHONPATH=src "$py" - "$SMOKE_JSON" "$ENGINE" "$IMAGE" "$size" "$build_seconds" "$uid" "$tmp/predict.json" <<'PY'
import json, subprocess, sys
from cifarlab.runinfo import write_result
out, engine, image, size, seconds, uid, predict = sys.argv[1:]
record = {
    "benchmark": "docker_smoke",
    "engine": engine,
    "engine_version": subprocess.run([engine, "--version"], capture_output=True, text=True).stdout.strip(),
    "image": image,
    "image_bytes": int(size),
    "build_seconds": int(seconds),
    "container_uid": int(uid),
    "predict": json.load(open(predict)),
    "result": "pass",
}
write_result(out, record, command=f"SMOKE_JSON={out} scripts/docker-smoke.sh")
PY
  say "wrote $SMOKE_JSON"
fi
