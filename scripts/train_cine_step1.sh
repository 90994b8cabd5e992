#!/usr/bin/env bash
# Recipe step 1 for cardiac cine (CMRxRecon; see scripts/train_recipe.sh for the schedule and environment).
exec bash "$(dirname "${BASH_SOURCE[0]}")/train_recipe.sh" cine 1 "$@"
