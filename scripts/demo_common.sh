# Shared preamble of demo.sh and demo_cine.sh (sourced, not run). Before sourcing, set REPO, the default
# DATA_ROOT/RESULT_ROOT and DEMO_USAGE; pass the script's arguments. Sets DEMO_PRESET (demo | tiny),
# PRESET, SEED (default 430), PY and mode (train | artifacts | baselines), and simulate_once.
source "$REPO/scripts/common.sh"
DEMO_PRESET="${DEMO_PRESET:-demo}"
[[ "$DEMO_PRESET" == demo || "$DEMO_PRESET" == tiny ]] || { echo "error: DEMO_PRESET must be demo or tiny" >&2; exit 2; }
export DATA_ROOT RESULT_ROOT PRESET="$DEMO_PRESET"
SEED="${SEED:-430}"
PY="$MRI_PYTHON"
mode=train
case "${1:-}" in
    "") ;;
    --use-artifacts) mode=artifacts ;;
    --baselines-only) mode=baselines ;;
    *) echo "usage: $DEMO_USAGE" >&2; exit 2 ;;
esac

# simulate_once LABEL STAMP_NAME MODULE [extra flags]: run `python -m MODULE` into DATA_ROOT unless the stamp
# says the same preset and seed, made by the same data/ code (a hash of data/*.py: a changed simulator
# regenerates), are already there. The simulator's preset is SIM_PRESET (default DEMO_PRESET).
simulate_once() {
    local label="$1" stamp="$DATA_ROOT/$2" module="$3" preset="${SIM_PRESET:-$DEMO_PRESET}"; shift 3
    local want="$preset seed=$SEED data=$(cat "$REPO"/data/*.py | sha1sum | cut -c1-12)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        echo "== $label: $preset preset, seed $SEED -> $DATA_ROOT"
        "$PY" -m "$module" --out "$DATA_ROOT" --preset "$preset" --seed "$SEED" --no-progress "$@"
        echo "$want" > "$stamp"
    else
        echo "== $label: $DATA_ROOT already holds the $preset data (seed $SEED)"
    fi
}
