#!/usr/bin/env bash
# The TiTok-MRI codec demo (run by `bash scripts/demo.sh --codec [--use-artifacts]`):
#   simulate the beating-heart data's ACDC tree (the simulator's `codec` preset: the demo geometry with 40 training
#   subjects; `--trees acdc`) -> for each K in CODEC_TOKENS, train the codec through scripts/train_titok_step{1,2,3}.sh
#   (PRESET=demo, TITOK_TOKENS=K, RESULT_ROOT/k<K>; the segmenter is trained once, with the first K, and shared:
#   it does not depend on K) or take the weights folders CODEC_ARTIFACTS/k<K> (--use-artifacts: those that exist,
#   an error if none) -> per K: scripts/codec.py encode the ACDC testing set, decode it, evaluate the tokens and
#   JPEG 2000 / JPEG at the same bytes per frame (--standard) -> scripts/codec_report.py: the rate-distortion
#   table (printed at the end) and PNG, and the ED/ES strips (original | decoded | error, segmentation contours)
#   of the tokens and the standard codecs at the middle K (64).
# Honours DATA_ROOT and RESULT_ROOT (defaults demo/CodecData and demo/codec_result), SEED (default 430),
# DEMO_PRESET (demo, or tiny for the tests: the simulator's tiny preset and the recipe's tiny models),
# CODEC_TOKENS (default "32 64 128"), CODEC_ARTIFACTS (default artifacts/titok) and TITOK_SEGMENTER (a trained
# segmenter checkpoint to use for every K instead of training one).
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"  # relative paths are relative to the checkout, as in the scripts that source common.sh
DATA_ROOT="${DATA_ROOT:-$REPO/demo/CodecData}"
RESULT_ROOT="${RESULT_ROOT:-$REPO/demo/codec_result}"
DEMO_USAGE="bash scripts/demo.sh --codec [--use-artifacts]"
# the K values and, with --use-artifacts, their weights folders: checked before anything is set up or run
read -r -a ks <<< "${CODEC_TOKENS:-32 64 128}"
[[ ${#ks[@]} -gt 0 ]] || { echo "error: CODEC_TOKENS is empty" >&2; exit 2; }
for k in "${ks[@]}"; do
    [[ "$k" =~ ^[1-9][0-9]*$ ]] || { echo "error: CODEC_TOKENS must be positive integers, got '$k'" >&2; exit 2; }
done
artifacts="${CODEC_ARTIFACTS:-$REPO/artifacts/titok}"
declare -A weights=()
if [[ "${1:-}" == --use-artifacts ]]; then
    for k in "${ks[@]}"; do
        [[ -f "$artifacts/k$k/titok.safetensors" ]] && weights[$k]="$artifacts/k$k"
    done
    if [[ ${#weights[@]} -eq 0 ]]; then
        echo "error: $artifacts: no codec weights folder $(printf 'k%s ' "${ks[@]}")with titok.safetensors inside" \
             "(train them: bash scripts/demo.sh --codec)" >&2
        exit 1
    fi
fi
source "$REPO/scripts/demo_common.sh"
[[ "$mode" != baselines ]] || { echo "usage: $DEMO_USAGE (the codec demo has no --baselines-only)" >&2; exit 2; }

SIM_PRESET=codec
[[ "$DEMO_PRESET" == tiny ]] && SIM_PRESET=tiny
simulate_once "simulate the ACDC tree" .simulated_codec data.simulate_cine --threads 1 --trees acdc
test_set="$DATA_ROOT/ACDC/testing"  # encode reads every patient through the validating ACDC reader

if [[ "$mode" == train ]]; then
    export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" NUM_WORKERS="${NUM_WORKERS:-1}"
    logs="$RESULT_ROOT/demo_logs"; mkdir -p "$logs"
    segmenter="${TITOK_SEGMENTER:-}"
    for k in "${ks[@]}"; do
        run="$RESULT_ROOT/k$k"
        echo "== train the codec, K=$k (PRESET=$PRESET) through scripts/train_titok_step{1,2,3}.sh -> $run"
        for s in 1 2 3; do
            RESULT_ROOT="$run" TITOK_TOKENS="$k" TITOK_SEGMENTER="$segmenter" CODEC_WEIGHTS="$run/titok_weights" \
                bash "scripts/train_titok_step$s.sh" > "$logs/k${k}_step$s.log" 2>&1 \
                || { echo "training failed: see $logs/k${k}_step$s.log" >&2; exit 1; }
        done
        grep -ho "\[train\] [^ ]* step[0-9] epoch=.*" "$logs"/k"${k}"_step*.log | tail -n 3 || true
        if [[ -z "$segmenter" ]]; then  # the first K's segmenter serves the others
            segmenter="$(ls -d "$run"/titok_seg/checkpoints/step2/epoch-* | sort -V | tail -n 1)"
        fi
        weights[$k]="$run/titok_weights"
    done
fi

# the K of the strips: 64 when there, else the middle one
ordered=($(printf '%s\n' "${!weights[@]}" | sort -n))
strip_k="${ordered[$(( ${#ordered[@]} / 2 ))]}"
[[ -n "${weights[64]:-}" ]] && strip_k=64
reports=()
for k in "${ordered[@]}"; do
    w="${weights[$k]}" out="$RESULT_ROOT/k$k"
    echo "== K=$k ($w): encode -> decode -> evaluate (tokens, JPEG 2000, JPEG at the same bytes per frame)"
    "$PY" scripts/codec.py encode --data "$test_set" --weights "$w" --out "$out/tokens.npz"
    "$PY" scripts/codec.py decode --tokens "$out/tokens.npz" --weights "$w" --out "$out/decoded" > "$out/decode.log"
    figures=()
    [[ "$k" == "$strip_k" ]] && figures=(--figures "$RESULT_ROOT/figures")
    for method in titok jpeg2000 jpeg; do
        standard=()
        [[ "$method" != titok ]] && standard=(--standard "$method")
        "$PY" scripts/codec.py evaluate --tokens "$out/tokens.npz" --data "$test_set" --weights "$w" "${standard[@]}" \
            --json_out "$out/eval_$method.json" "${figures[@]}" > "$out/eval_$method.txt"
        tail -n 1 "$out/eval_$method.txt"
        reports+=("$out/eval_$method.json")
    done
done

"$PY" scripts/codec_report.py --json "${reports[@]}" --out "$RESULT_ROOT/report" \
    --title "TiTok-MRI vs JPEG 2000 / JPEG at the same bytes per frame ($DEMO_PRESET data, ACDC testing set)" > /dev/null
echo
echo "== TiTok-MRI codec vs standard codecs at the same bytes per frame (ACDC testing set, $DEMO_PRESET data)"
cat "$RESULT_ROOT/report/codec_rd.md"
echo "   figures: $RESULT_ROOT/report/codec_rd.png, $RESULT_ROOT/figures/codec_strip_{titok,jpeg2000,jpeg}_k$strip_k.png"
exit 0
