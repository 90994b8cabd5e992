#!/usr/bin/env bash
# End-to-end demo on the embedded synthetic data set (CPU is enough):
#   simulate (demo preset) -> zero-filled and GRAPPA baselines -> evaluate.py (leaderboard SSIM).
# Honours DATA_ROOT and RESULT_ROOT (defaults: demo/Data and demo/result inside the checkout, so the
# demo never writes into a real ../Data). SEED (default 430) selects the synthetic data set.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_ROOT="${DATA_ROOT:-$REPO/demo/Data}"
RESULT_ROOT="${RESULT_ROOT:-$REPO/demo/result}"
source "$REPO/scripts/common.sh"
SEED="${SEED:-430}"
PY="$MRI_PYTHON"

stamp="$DATA_ROOT/.simulated"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "demo seed=$SEED" ]]; then
    echo "== simulate: demo preset, seed $SEED -> $DATA_ROOT"
    "$PY" -m data.simulate --out "$DATA_ROOT" --preset demo --seed "$SEED"
    echo "demo seed=$SEED" > "$stamp"
else
    echo "== simulate: $DATA_ROOT already holds the demo data (seed $SEED)"
fi
"$PY" -m data.formats check "$DATA_ROOT"

declare -A score
for kind in zero_filled grappa; do
    out="$RESULT_ROOT/baselines/$kind"
    echo "== baseline: $kind -> $out"
    "$PY" -m data.baselines baseline --kind "$kind" --path_leaderboard_data "$DATA_ROOT/leaderboard" --out "$out"
    "$PY" evaluate.py --path_leaderboard_data "$DATA_ROOT/leaderboard" --path_your_data "$out" \
        --json "$out/leaderboard_ssim.json"
    score[$kind]=$("$PY" -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["total"])' "$out/leaderboard_ssim.json")
done
echo
echo "== demo leaderboard SSIM (Total = mean of acc4 and acc8)"
printf '   %-12s %s\n' "zero-filled" "${score[zero_filled]}" "GRAPPA" "${score[grappa]}"
