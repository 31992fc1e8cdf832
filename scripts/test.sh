#!/usr/bin/env bash
# Set up, lint, and run the whole test suite (Triton kernels under TRITON_INTERPRET=1). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest -q -ra --durations=15 "$@"
