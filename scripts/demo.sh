#!/usr/bin/env bash
# End-to-end demo on the embedded synthetic data set (a CPU is enough):
#   simulate (demo preset) -> zero-filled and GRAPPA baselines -> train the anatomy classifier and the four
#   PromptMR+ models at demo scale through the real recipe scripts (PRESET=demo) -> reconstruct the
#   leaderboard (routing by the classifier and the masks) -> evaluate.py -> PNG figures; and the same
#   baselines and weights on the real-anatomy test leaderboard (brain only, never trained or tuned on), both
#   leaderboards in one table.
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
# The real-anatomy leaderboard (python -m data.simulate --preset realtest, same SEED; realtest_tiny with
# DEMO_PRESET=tiny) goes to REALTEST_ROOT (default RealData beside DATA_ROOT; never inside it), its results
# to $RESULT_ROOT/realtest; DEMO_REALTEST=0 skips it. Trained checkpoints reach it exported to
# $RESULT_ROOT/demo_artifacts (the same weights).
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
source "$REPO/scripts/demo_leaderboard.sh"
DEMO_REALTEST="${DEMO_REALTEST:-1}"
[[ "$DEMO_REALTEST" == 0 || "$DEMO_REALTEST" == 1 ]] || { echo "error: DEMO_REALTEST must be 1 or 0, got '$DEMO_REALTEST'" >&2; exit 2; }
REALTEST_ROOT="${REALTEST_ROOT:-$(dirname "$DATA_ROOT")/RealData}"
REALTEST_RESULT="$RESULT_ROOT/realtest"
case "$(realpath -m "$REALTEST_ROOT")/" in  # `data.formats check DATA_ROOT` would meet a leaderboard-only tree
    "$(realpath -m "$DATA_ROOT")"/*) echo "error: REALTEST_ROOT $REALTEST_ROOT must not be DATA_ROOT $DATA_ROOT or inside it" >&2; exit 2 ;;
esac
boards=(synthetic)
[[ "$DEMO_REALTEST" == 1 ]] && boards+=(real)

simulate_once simulate .simulated data.simulate
"$PY" -m data.formats check "$DATA_ROOT"
if [[ "$DEMO_REALTEST" == 1 ]]; then  # simulate_once into REALTEST_ROOT with the realtest preset, same SEED
    realtest_preset=realtest; [[ "$DEMO_PRESET" == tiny ]] && realtest_preset=realtest_tiny  # 2 slices per volume
    DATA_ROOT="$REALTEST_ROOT" SIM_PRESET=$realtest_preset simulate_once "real-anatomy leaderboard" .simulated data.simulate
    "$PY" -m data.formats check "$REALTEST_ROOT"
fi

board_baselines synthetic "$DATA_ROOT" "$RESULT_ROOT"
[[ "$DEMO_REALTEST" == 1 ]] && board_baselines real "$REALTEST_ROOT" "$REALTEST_RESULT"

if [[ "$mode" != baselines ]]; then
    weights="${ARTIFACTS_DIR:-$REPO/artifacts}"
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
        board_model synthetic "$DATA_ROOT" "$RESULT_ROOT" result --figures "$RESULT_ROOT/figures"
        if [[ "$DEMO_REALTEST" == 1 ]]; then  # the checkpoints just used, as artifacts: the float32 weights --weights result loaded
            weights="$RESULT_ROOT/demo_artifacts"
            echo "== export the trained checkpoints -> $weights"
            "$PY" -m models.artifacts export-result --result_path "$RESULT_ROOT" --out_dir "$weights" --net_prefix "${MODEL:-promptmr}"
        fi
    else
        board_model synthetic "$DATA_ROOT" "$RESULT_ROOT" "$weights" --figures "$RESULT_ROOT/figures"
    fi
    [[ "$DEMO_REALTEST" == 1 ]] && board_model real "$REALTEST_ROOT" "$REALTEST_RESULT" "$weights"
fi

print_table "${boards[@]}"
if [[ "$mode" != baselines ]]; then
    echo "   figures: $RESULT_ROOT/figures   routing: $RESULT_ROOT/test_reconstruct/reconstructions_leaderboard/routing.json"
    [[ "$DEMO_REALTEST" == 1 ]] && echo "   real anatomy routing: $(routed_to_brain "$REALTEST_RESULT/test_reconstruct/reconstructions_leaderboard/routing.json") to brain at their acceleration; $REALTEST_RESULT/test_reconstruct/reconstructions_leaderboard/routing.json"
fi
exit 0
