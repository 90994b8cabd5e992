#!/usr/bin/env bash
# System packages for running the staged training scripts (tmux) and building DeepSpeed's CPU Adam
# (a C++ compiler). Python packages come from scripts/requirements.sh. Needs root (or sudo).
set -euo pipefail
pkgs=(tmux g++ python3-venv)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -q && $SUDO apt-get install -y -q "${missing[@]}"
fi
echo "[apt] ok: ${pkgs[*]}"
