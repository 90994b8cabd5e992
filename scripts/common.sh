# Shared preamble of the entry-point scripts (sourced, not run): repository root as the working
# directory, the environment from scripts/requirements.sh ($MRI_PYTHON), offline wandb, and the data and
# result roots (DATA_ROOT, RESULT_ROOT; defaults ../Data and ../result beside the checkout).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=requirements.sh
source "$REPO/scripts/requirements.sh" >&2
export WANDB_MODE="${WANDB_MODE:-offline}"
DATA_ROOT="${DATA_ROOT:-$REPO/../Data}"
RESULT_ROOT="${RESULT_ROOT:-$REPO/../result}"
