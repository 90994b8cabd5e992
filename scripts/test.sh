#!/usr/bin/env bash
# Set up the environment (scripts/requirements.sh) and run the whole test suite on the CPU.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k masks`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=requirements.sh
source scripts/requirements.sh
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" WANDB_MODE="${WANDB_MODE:-offline}" PYTHONHASHSEED=0
# one thread per test worker: oversubscribed OpenMP threads make small ops 10-100x slower
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
workers=$("$MRI_PYTHON" -c 'import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))')
exec "$MRI_PYTHON" -m pytest tests -q -n "$workers" --durations=15 "$@"
