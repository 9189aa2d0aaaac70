#!/usr/bin/env bash
# Installs Keel with its test extras into ./.venv and runs the whole suite.
# Tests that need PostgreSQL use KEEL_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test);
# without a server they are skipped with a reason, except under CI=true, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[dev,tools]"  # the suite tests keel_tools too
exec .venv/bin/python -m pytest "$@"
