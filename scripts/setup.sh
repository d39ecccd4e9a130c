#!/usr/bin/env bash
# Create or update the virtual environment at .venv in the repo root. Idempotent: pip runs
# only when pyproject.toml or the requested extras changed since the last successful setup.
#
#   scripts/setup.sh serve            # serving only: no torch (fast)
#   scripts/setup.sh train,serve,dev  # everything (tests, training)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-serve}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.cifarlab-setup-$(echo "$extras" | tr ',' '-')"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
# Done already if an earlier setup with the same pyproject.toml covered every requested extra
# (so `serve` after `train,serve,dev` needs no network).
for done in .venv/.cifarlab-setup-*; do
  [ -f "$done" ] && [ "$(cat "$done")" = "$want" ] || continue
  have=",${done#.venv/.cifarlab-setup-},"; have=${have//-/,}
  missing=0
  for e in ${extras//,/ }; do [[ "$have" == *",$e,"* ]] || missing=1; done
  [ "$missing" = 0 ] && exit 0
done
.venv/bin/python -m pip install --quiet --upgrade pip
if [[ ",$extras," == *",train,"* ]]; then
  # The CPU machines this project targets carry these exact wheels locally; a plain
  # `torch>=2.4` would otherwise fetch the newest (several GB) build.
  .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" \
    || .venv/bin/python -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
fi
.venv/bin/python -m pip install --quiet -e ".[$extras]"
echo "$want" > "$stamp"
