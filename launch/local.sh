#!/usr/bin/env bash
# Run one config locally: Ray starts in-process (no dashboard).
#   bash launch/local.sh configs/demo.yaml [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
exec .venv/bin/rl-div train "$@"
