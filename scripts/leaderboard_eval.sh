#!/usr/bin/env bash
# Score the reconstructions written by scripts/reconstruct_*.sh with the leaderboard metric (evaluate.py).
# Environment: DATA_ROOT (default ../Data), RESULT_ROOT (default ../result). Extra arguments go to
# evaluate.py, e.g. `bash scripts/leaderboard_eval.sh --json scores.json`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=requirements.sh
source scripts/requirements.sh
DATA_ROOT="${DATA_ROOT:-$REPO/../Data}"
RESULT_ROOT="${RESULT_ROOT:-$REPO/../result}"
exec "$MRI_PYTHON" evaluate.py --path_leaderboard_data "$DATA_ROOT/leaderboard" \
    --path_your_data "$RESULT_ROOT/test_reconstruct/reconstructions_leaderboard" "$@"
