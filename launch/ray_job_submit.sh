#!/usr/bin/env bash
# Submit a training run to an existing Ray cluster as a Ray job. The repository travels as the
# job's working directory, so configs and plugin modules resolve on every node; the cluster's
# Python environment must already have rl_div's dependencies (bash launch/setup.sh on each node,
# or a container image).
#   RAY_ADDRESS=http://head:8265 bash launch/ray_job_submit.sh configs/grpo.yaml train.steps=200
# Outputs go to run.output_dir on the node running the driver: point it at shared storage.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster's job server, e.g. http://head:8265}"
exec ray job submit --address "$RAY_ADDRESS" --working-dir . \
  --runtime-env-json '{"excludes": [".venv", "runs", ".git"]}' \
  -- python -m rl_div.cli train "$@" --address auto
