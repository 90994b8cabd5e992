#!/usr/bin/env bash
# TiTok-MRI codec recipe step 3 (ACDC; see scripts/train_recipe.sh for the stages, schedule and environment).
exec bash "$(dirname "${BASH_SOURCE[0]}")/train_recipe.sh" titok 3 "$@"
