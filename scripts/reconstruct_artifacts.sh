#!/usr/bin/env bash
# Reconstruct the leaderboard with the submitted weights in artifacts/ ({brain,knee}_acc{4,8}.safetensors and
# anatomy_cnn.safetensors; see utils/artifacts.py and models/artifacts.py): <RESULT_ROOT>/test_reconstruct/reconstructions_leaderboard.
# Environment: DATA_ROOT (default ../Data), RESULT_ROOT (default ../result), ARTIFACTS_DIR (default
# artifacts/ in the checkout). Extra arguments go to reconstruct.py.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec "$MRI_PYTHON" reconstruct.py --path_data "$DATA_ROOT/leaderboard" --result_path "$RESULT_ROOT" \
    --weights artifacts --artifacts_dir "${ARTIFACTS_DIR:-$REPO/artifacts}" "$@"
