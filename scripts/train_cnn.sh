#!/usr/bin/env bash
# The brain/knee anatomy classifier: 5 epochs, lr 1e-3 (see scripts/train_recipe.sh for the environment).
exec bash "$(dirname "${BASH_SOURCE[0]}")/train_recipe.sh" cnn "$@"
