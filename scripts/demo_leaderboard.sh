# Leaderboard helpers of demo.sh (sourced after demo_common.sh, not run): the same baselines, reconstruction,
# scoring and table for every leaderboard the SNU demo reports (the synthetic one under DATA_ROOT and the
# real-anatomy one under REALTEST_ROOT). Scores are kept in scores[BOARD/NAME] = "acc4 acc8 total".
declare -A scores

# score BOARD DATA NAME RECON_DIR [extra evaluate.py flags]: evaluate RECON_DIR against DATA/leaderboard into
# RECON_DIR/leaderboard_ssim.json and keep its acc4, acc8 and total leaderboard SSIM.
score() {
    local board="$1" data="$2" name="$3" dir="$4"; shift 4
    "$PY" evaluate.py --path_leaderboard_data "$data/leaderboard" --path_your_data "$dir" \
        --json "$dir/leaderboard_ssim.json" --no_progress "$@"
    scores[$board/$name]=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.4f %.4f %.4f" % (d["acc4"], d["acc8"], d["total"]))' "$dir/leaderboard_ssim.json")
}

# board_baselines BOARD DATA RESULT: the zero-filled and GRAPPA baselines of DATA/leaderboard into
# RESULT/baselines/{zero_filled,grappa}, scored.
board_baselines() {
    local board="$1" data="$2" result="$3" kind out
    for kind in zero_filled grappa; do
        out="$result/baselines/$kind"
        echo "== $board baseline: $kind -> $out"
        "$PY" -m data.baselines baseline --kind "$kind" --path_leaderboard_data "$data/leaderboard" --out "$out" --no_progress
        score "$board" "$data" "$kind" "$out"
    done
}

# board_model BOARD DATA RESULT WEIGHTS [extra evaluate.py flags]: reconstruct DATA/leaderboard (routing from the
# data) into RESULT/test_reconstruct/reconstructions_leaderboard (+ routing.json) and score it as "model".
# WEIGHTS: "result" = the checkpoints trained under RESULT (scripts/reconstruct_result.sh), else a folder of
# artifacts (scripts/reconstruct_artifacts.sh).
board_model() {
    local board="$1" data="$2" result="$3" weights="$4"; shift 4
    echo "== $board leaderboard: reconstruct with $([[ "$weights" == result ]] && echo "the checkpoints in $result" || echo "the artifacts in $weights")"
    if [[ "$weights" == result ]]; then
        DATA_ROOT="$data" RESULT_ROOT="$result" bash scripts/reconstruct_result.sh --no_progress
    else
        DATA_ROOT="$data" RESULT_ROOT="$result" ARTIFACTS_DIR="$weights" bash scripts/reconstruct_artifacts.sh --no_progress
    fi
    score "$board" "$data" model "$result/test_reconstruct/reconstructions_leaderboard" "$@"
}

# routed_to_brain ROUTING_JSON: "K of N volumes", K those reconstructed by brain_acc<A> with A the acceleration of
# their folder (the real-anatomy leaderboard is brain only; reconstruct.py routes from the data, never the names).
routed_to_brain() {
    "$PY" -c 'import json,sys
v = json.load(open(sys.argv[1]))["volumes"]
ok = sum(r.get("status") == "ok" and r.get("model") == "brain_" + name.split("/")[0] for name, r in v.items())
print("%d of %d volumes" % (ok, len(v)))' "$1"
}

# print_table BOARD...: one leaderboard SSIM table, acc4 acc8 Total per board, each board's title centred above
# its columns; a row is printed when the first board has that score ("-" where another board lacks it).
print_table() {
    local -A titles=([synthetic]=synthetic [real]="real anatomy (brain only)")
    local label='   %-14s ' cells=' %7s %7s %7s    ' board name line at=18
    echo
    line="== demo leaderboard SSIM"
    for board in "$@"; do  # a board's block is 28 wide from column `at`; its numbers fill the first 24
        local title="${titles[$board]}" pad
        pad=$(( at + (24 - ${#title}) / 2 - ${#line} ))
        (( pad >= 2 )) || pad=2
        line+="$(printf '%*s' "$pad" "")$title"
        at=$(( at + 28 ))
    done
    echo "$line"
    line=$(printf "$label" "")
    for board in "$@"; do line+=$(printf "$cells" acc4 acc8 Total); done
    echo "${line%"${line##*[! ]}"}"
    for name in zero_filled grappa model; do
        [[ -n "${scores[$1/$name]:-}" ]] || continue
        line=$(printf "$label" "$name")
        # shellcheck disable=SC2086  # "acc4 acc8 total" splits into three cells
        for board in "$@"; do line+=$(printf "$cells" ${scores[$board/$name]:-- - -}); done
        echo "${line%"${line##*[! ]}"}"
    done
}
