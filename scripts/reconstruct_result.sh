#!/usr/bin/env bash
# Reconstruct the leaderboard with the trained checkpoints in $RESULT_ROOT (last epoch of each net's highest
# recipe step): <RESULT_ROOT>/test_reconstruct/reconstructions_leaderboard/acc{4,8}/*.h5 + routing.json.
# Environment: DATA_ROOT (default ../Data), RESULT_ROOT (default ../result), MODEL (net prefix, default
# promptmr: nets ${MODEL}_{brain,knee}_acc{4,8} and anatomy_cnn). Extra arguments go to reconstruct.py,
# e.g. `bash scripts/reconstruct_result.sh --batch_size 8 --device cuda`.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec "$MRI_PYTHON" reconstruct.py --path_data "$DATA_ROOT/leaderboard" --result_path "$RESULT_ROOT" \
    --weights result --net_prefix "${MODEL:-promptmr}" "$@"
