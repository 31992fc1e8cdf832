#!/usr/bin/env bash
# The newcomer's first command: set up, then run the main job on the CPU: `vgpo-fast train` with no arguments,
# i.e. VGPO on the built-in shapes task from the shipped base model (configs/cpu_default.yaml), ending with
# runs/<name>/report.html and the held-out reward before and after. Extra arguments go to `vgpo-fast train`
# (e.g. `bash scripts/run.sh algorithm.name=flow_grpo run.name=shapes-flow-grpo`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
vgpo-fast train "$@"
