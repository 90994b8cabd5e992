#!/usr/bin/env bash
# The cine half of the demo (run by `bash scripts/demo.sh --cine [--use-artifacts]`):
#   simulate the beating-heart data (demo preset) -> zero-filled and parallel-imaging baselines ->
#   train PromptMR+ cine through scripts/train_cine_step{1,2,3}.sh (PRESET=demo) or take artifacts/cine.safetensors
#   -> reconstruct.py --task cine -> evaluate.py --task cine (2025 protocol) -> figures (PNG strips, GIF).
# Honours DATA_ROOT and RESULT_ROOT (defaults demo/CineData and demo/cine_result inside the checkout), SEED
# (default 430), DEMO_PRESET (demo, or tiny for the tests) and MODEL (promptmr, default, or kgmgt: the cine
# network the recipe trains and reconstruct.py reads as <MODEL>_cine; --use-artifacts reads artifacts/cine.safetensors
# for promptmr, artifacts/<MODEL>/cine.safetensors otherwise).
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_ROOT="${DATA_ROOT:-$REPO/demo/CineData}"
RESULT_ROOT="${RESULT_ROOT:-$REPO/demo/cine_result}"
DEMO_USAGE="bash scripts/demo.sh --cine [--use-artifacts | --baselines-only]"
source "$REPO/scripts/demo_common.sh"
export MODEL="${MODEL:-promptmr}"
simulate_once "simulate cine" .simulated_cine data.simulate_cine --threads 1
val="$DATA_ROOT/CMRxRecon/MultiCoil/Cine/ValidationSet"
"$PY" -m data.formats check "$DATA_ROOT/CMRxRecon"

declare -A scores
score() {  # score NAME OUTPUT_ROOT: 2025-protocol SSIM per acceleration (mean over views) and overall
    local name="$1" dir="$2"
    "$PY" evaluate.py --task cine --protocol 2025 --path_gt "$val" --path_your_data "$dir" --json "$dir/cine_scores.json" \
        --no_progress > "$dir/cine_scores.txt"
    scores[$name]=$("$PY" - "$dir/cine_scores.json" <<'PY'
import json, sys
from collections import defaultdict
d = json.load(open(sys.argv[1]))
acc = defaultdict(list)
for group, values in d["groups"].items():
    acc[group.split("/")[-1]].append(values["ssim"])
print(" ".join("%.4f" % (sum(acc[k]) / len(acc[k])) if k in acc else "-" for k in ("AccFactor04", "AccFactor08", "AccFactor10")),
      "%.4f" % d["ssim"])
PY
)
}

for method in zero_filled auto; do
    out="$RESULT_ROOT/baselines/$method"
    echo "== cine baseline: $method -> $out"
    "$PY" -m data.cine_baselines --path_data "$val" --out "$out" --method "$method" --no_progress
    score "$method" "$out"
done

if [[ "$mode" != baselines ]]; then
    if [[ "$mode" == train ]]; then
        echo "== train $MODEL cine (PRESET=$PRESET) through scripts/train_cine_step{1,2,3}.sh"
        export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" NUM_WORKERS="${NUM_WORKERS:-1}"
        logs="$RESULT_ROOT/demo_logs"; mkdir -p "$logs"
        for s in 1 2 3; do
            bash "scripts/train_cine_step$s.sh" > "$logs/cine_step$s.log" 2>&1 || { echo "training failed: see $logs/cine_step$s.log" >&2; exit 1; }
        done
        grep -ho "\[train\] [^ ]* step[0-9] epoch=.*" "$logs"/cine_step*.log || true
        weights=(--weights result --net_prefix "$MODEL")
    else
        weights=(--weights artifacts)
        # PromptMR+ cine ships as artifacts/cine.safetensors, the other cine models as artifacts/<MODEL>/cine.safetensors
        [[ "$MODEL" != promptmr ]] && weights+=(--artifacts_dir "$REPO/artifacts/$MODEL")
    fi
    echo "== reconstruct.py --task cine (${weights[*]})"
    "$PY" reconstruct.py --task cine --path_data "$val" --result_path "$RESULT_ROOT" "${weights[@]}" --no_progress
    score model "$RESULT_ROOT"
    echo "== figures -> $RESULT_ROOT/figures"
    "$PY" -m data.cine_figures --path_gt "$val" --result "$RESULT_ROOT" --out "$RESULT_ROOT/figures" --cases 3
fi

echo
echo "== demo cine SSIM (CMRxRecon 2025 protocol, validation set)"
printf '   %-18s %7s %7s %7s %7s\n' "" 4x 8x 10x All
for name in zero_filled auto model; do
    label="$name"; [[ "$name" == auto ]] && label="parallel imaging"
    [[ -n "${scores[$name]:-}" ]] && printf '   %-18s %7s %7s %7s %7s\n' "$label" ${scores[$name]}
done
exit 0
