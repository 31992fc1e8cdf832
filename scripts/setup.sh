#!/usr/bin/env bash
# Sets up .venv from nothing: torch (the CPU wheel here; VGPO_TORCH overrides), vgpo-fast in editable mode with
# its C++ extension built, and the test/reward extras. Idempotent: a second run only re-checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -c "import torch" 2>/dev/null || pip install -q "${VGPO_TORCH:-torch==2.13.0}"
pip install -q "setuptools>=68" wheel ninja
pip install -q --no-build-isolation -e ".[dev,rewards]"
python -c "import vgpo_fast.ops as o; print('vgpo-fast backends on this CPU:', o.available_backends('cpu'))"
