#!/usr/bin/env bash
# End-to-end demo on the embedded synthetic data set (a CPU is enough):
#   simulate (demo preset) -> zero-filled and GRAPPA baselines -> train the anatomy classifier and the four
#   PromptMR+ models at demo scale through the real recipe scripts (PRESET=demo) -> reconstruct the
#   leaderboard (routing by the classifier and the masks) -> evaluate.py -> PNG figures.
#
#   bash scripts/demo.sh                   # the whole chain (training takes about half an hour on 2 cores)
#   bash scripts/demo.sh --use-artifacts   # skip training: reconstruct with the shipped artifacts/
#   bash scripts/demo.sh --baselines-only  # stop after the baselines
#   bash scripts/demo.sh --cine [--use-artifacts | --baselines-only]   # the cardiac cine demo (scripts/demo_cine.sh)
#   bash scripts/demo.sh --codec [--use-artifacts]   # the TiTok-MRI codec vs JPEG 2000 / JPEG (scripts/demo_codec.sh)
#
# Honours DATA_ROOT and RESULT_ROOT (defaults: demo/Data and demo/result inside the checkout, so the demo
# never writes into a real ../Data). SEED (default 430) selects the synthetic data set; DEMO_PRESET=tiny
# runs the same chain on the tiny data set and models in a few minutes (used by the tests).
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == --cine ]]; then
    shift
    exec bash "$REPO/scripts/demo_cine.sh" "$@"
fi
if [[ "${1:-}" == --codec ]]; then
    shift
    exec bash "$REPO/scripts/demo_codec.sh" "$@"
fi
DATA_ROOT="${DATA_ROOT:-$REPO/demo/Data}"
RESULT_ROOT="${RESULT_ROOT:-$REPO/demo/result}"
DEMO_USAGE="bash scripts/demo.sh [--cine | --codec] [--use-artifacts | --baselines-only]"
source "$REPO/scripts/demo_common.sh"
simulate_once simulate .simulated data.simulate
"$PY" -m data.formats check "$DATA_ROOT"

score() {  # score NAME RECON_DIR [extra evaluate.py flags]: evaluate and keep "acc4 acc8 total"
    local name="$1" dir="$2"; shift 2
    "$PY" evaluate.py --path_leaderboard_data "$DATA_ROOT/leaderboard" --path_your_data "$dir" \
        --json "$dir/leaderboard_ssim.json" --no_progress "$@"
    scores[$name]=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.4f %.4f %.4f" % (d["acc4"], d["acc8"], d["total"]))' "$dir/leaderboard_ssim.json")
}
declare -A scores
for kind in zero_filled grappa; do
    out="$RESULT_ROOT/baselines/$kind"
    echo "== baseline: $kind -> $out"
    "$PY" -m data.baselines baseline --kind "$kind" --path_leaderboard_data "$DATA_ROOT/leaderboard" --out "$out" --no_progress
    score "$kind" "$out"
done

if [[ "$mode" != baselines ]]; then
    if [[ "$mode" == train ]]; then
        echo "== train (PRESET=$PRESET): classifier, then brain and knee chains side by side"
        export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" NUM_WORKERS="${NUM_WORKERS:-1}"
        logs="$RESULT_ROOT/demo_logs"; mkdir -p "$logs"
        bash scripts/train_cnn.sh > "$logs/anatomy_cnn.log" 2>&1
        chain() { for acc in 4 8; do for s in 1 2 3; do
            bash "scripts/train_$1_acc${acc}_step$s.sh" > "$logs/$1_acc${acc}_step$s.log" 2>&1 || return 1; done; done; }
        chain brain & pid_brain=$!
        chain knee & pid_knee=$!
        wait "$pid_brain" && wait "$pid_knee" || { echo "training failed: see $logs" >&2; exit 1; }
        grep -ho "\[train\] [^ ]* step3 epoch=.*" "$logs"/*_step3.log || true
        echo "== reconstruct with the trained checkpoints"
        bash scripts/reconstruct_result.sh --no_progress
    else
        echo "== reconstruct with the shipped artifacts"
        bash scripts/reconstruct_artifacts.sh --no_progress
    fi
    recon="$RESULT_ROOT/test_reconstruct/reconstructions_leaderboard"
    score model "$recon" --figures "$RESULT_ROOT/figures"
fi

echo
echo "== demo leaderboard SSIM"
printf '   %-14s %7s %7s %7s\n' "" acc4 acc8 Total
for name in zero_filled grappa model; do
    [[ -n "${scores[$name]:-}" ]] && printf '   %-14s %7s %7s %7s\n' "$name" ${scores[$name]}
done
[[ "$mode" != baselines ]] && echo "   figures: $RESULT_ROOT/figures   routing: $recon/routing.json"
exit 0
