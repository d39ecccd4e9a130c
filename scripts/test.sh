#!/usr/bin/env bash
# Set up everything the test suite needs, then run the lint gate and the tests. Idempotent.
#
#   scripts/test.sh            # all tests
#   scripts/test.sh -k data    # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh train,serve,dev
# The web page test drives Debian's Chromium headless through Playwright (never
# `playwright install`, which downloads a browser).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
