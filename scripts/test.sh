#!/usr/bin/env bash
# The test command: set up, lint, then the whole test suite.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check trio_yastack tests benchmarks examples native setup.py
.venv/bin/ruff format --check trio_yastack tests benchmarks examples native setup.py
exec .venv/bin/python -m pytest -q "$@"
