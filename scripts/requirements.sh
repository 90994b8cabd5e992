#!/usr/bin/env bash
# Install everything the pipeline needs, idempotently.
# - Uses the active virtualenv / conda env when one is active, else creates .venv/ at the repo root.
# - torch: `pip install torch==2.13.0` only when torch is not importable (never an unpinned torch).
# - deepspeed: built without ops (DS_BUILD_OPS=0); CPU Adam is JIT-compiled on first use.
# Source it (`. scripts/requirements.sh`) or run it; demo.sh and test.sh source it.
set -euo pipefail
_repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" ]]; then
    _py="$(command -v python)"
else
    if [[ ! -x "$_repo_root/.venv/bin/python" ]]; then
        echo "[requirements] creating $_repo_root/.venv"
        python3 -m venv "$_repo_root/.venv"
    fi
    # shellcheck disable=SC1091
    source "$_repo_root/.venv/bin/activate"
    _py="$_repo_root/.venv/bin/python"
fi
_pip() { "$_py" -m pip --disable-pip-version-check -q "$@"; }

if ! "$_py" -c "import torch" >/dev/null 2>&1; then
    echo "[requirements] installing torch==2.13.0"
    _pip install torch==2.13.0
fi

# Pinned pure-Python / wheel dependencies; skipped when the stamp matches requirements.txt.
_stamp="$("$_py" -c 'import sys; print(sys.prefix)')/.mri_requirements_stamp"
_want="$(sha1sum "$_repo_root/requirements.txt" | cut -d' ' -f1)"
if [[ ! -f "$_stamp" || "$(cat "$_stamp")" != "$_want" ]]; then
    echo "[requirements] installing requirements.txt"
    _pip install -r "$_repo_root/requirements.txt"
    echo "$_want" > "$_stamp"
fi

# The project itself, editable (pyproject.toml): tests and benchmarks import it from any folder. No
# dependencies (requirements.txt above) and no build isolation (nothing downloaded).
if [[ "$(cd / && "$_py" -c 'import train; print(train.__file__)' 2>/dev/null)" != "$_repo_root/train.py" ]]; then
    echo "[requirements] installing the project (editable)"
    _pip install --no-deps --no-build-isolation -e "$_repo_root"
fi

if ! "$_py" -c "import deepspeed" >/dev/null 2>&1; then
    echo "[requirements] installing deepspeed==0.19.8 (DS_BUILD_OPS=0)"
    DS_BUILD_OPS=0 _pip install --no-build-isolation deepspeed==0.19.8
fi

# Optional GPU extra (MRI_GPU_EXTRA=1): mamba-ssm's fused selective-scan kernel and causal-conv1d.
# They build only where CUDA and nvcc are present; nothing requires them (models/selective_scan.py falls
# back to its own parallel scan), so a failed build is a warning, not an error.
if [[ "${MRI_GPU_EXTRA:-0}" == 1 ]] && ! "$_py" -c "import mamba_ssm" >/dev/null 2>&1; then
    if command -v nvcc >/dev/null 2>&1 && "$_py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        echo "[requirements] GPU extra: building causal-conv1d==1.7.0 and mamba-ssm==2.3.2.post1"
        _pip install --no-build-isolation causal-conv1d==1.7.0 mamba-ssm==2.3.2.post1 \
            || echo "[requirements] warning: the mamba-ssm GPU extra did not build; using the PyTorch scan" >&2
    else
        echo "[requirements] warning: MRI_GPU_EXTRA=1 needs CUDA and nvcc; skipped" >&2
    fi
fi

export MRI_PYTHON="$_py"
echo "[requirements] ok: $("$_py" -c 'import torch, sys; print(f"python {sys.version.split()[0]}, torch {torch.__version__}")')"
