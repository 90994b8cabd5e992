#!/usr/bin/env bash
# Score the reconstructions written by scripts/reconstruct_*.sh with the leaderboard metric (evaluate.py).
# Environment: DATA_ROOT (default ../Data), RESULT_ROOT (default ../result). Extra arguments go to
# evaluate.py, e.g. `bash scripts/leaderboard_eval.sh --json scores.json`.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec "$MRI_PYTHON" evaluate.py --path_leaderboard_data "$DATA_ROOT/leaderboard" \
    --path_your_data "$RESULT_ROOT/test_reconstruct/reconstructions_leaderboard" "$@"
