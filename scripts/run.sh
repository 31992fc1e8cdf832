#!/usr/bin/env bash
# The newcomer's first command: set up, then run the main job on the CPU.
# Until the trainer lands this is the fused-op benchmark (SD3.5-M latent sizes, eager vs fused, GB/s vs copy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python benchmarks/ops.py --quick "$@"
