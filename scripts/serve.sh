#!/usr/bin/env bash
# Set up the serving environment (no torch) and serve the bundled model: the REST API, the web
# page at /ui and Swagger at /docs on http://127.0.0.1:8000. Idempotent; works offline once set up.
#
#   scripts/serve.sh                  # defaults
#   scripts/serve.sh --port 9000      # extra arguments go to `cifarlab serve`
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh serve
exec .venv/bin/cifarlab serve --host "${CIFARLAB_HOST:-127.0.0.1}" --port "${CIFARLAB_PORT:-8000}" "$@"
