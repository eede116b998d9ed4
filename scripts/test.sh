#!/usr/bin/env bash
# The test command: set up, lint, type-check (mypy: pyproject.toml's [tool.mypy], strict on stack/
# and socket_api/), then the whole test suite.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check trio_yastack tests benchmarks examples native setup.py
.venv/bin/ruff format --check trio_yastack tests benchmarks examples native setup.py
echo "test: mypy"
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
