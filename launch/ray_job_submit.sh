#!/usr/bin/env bash
# Submit a training run to a running Ray cluster as a Ray job, and wait for it (exit 0 when it
# succeeded, 1 when it failed; its log streams here).
#   RAY_ADDRESS=http://HEAD:8265 bash launch/ray_job_submit.sh configs/demo.yaml \
#       run.output_dir=/shared/runs/demo train.steps=200
# - RAY_ADDRESS is the head's job server (the Ray dashboard, port 8265 by default): the head needs
#   `ray[default]` (a dependency of rl_div) and must not be started with --include-dashboard=false.
# - The repository is the job's working directory: rl_div, rewards/, configs and your plugin modules
#   (run.plugins=[mypkg.my_rewards] for ./mypkg/my_rewards.py) travel to every node with it. The
#   cluster's Python must have rl_div's dependencies: start every node with the environment
#   activated (source .venv/bin/activate && ray start ...), or use a container image.
# - run.output_dir must be an absolute path on storage every node mounts (the driver writes metrics,
#   the learner actor writes checkpoint parts); the run checks this at start-up.
# - RL_DIV_JOB_ARGS adds `ray job submit` options, e.g. RL_DIV_JOB_ARGS=--no-wait.
# - A sharded learner (train.strategy=fsdp2, train.num_learners=N, train.num_gpus=1) needs N learner
#   GPUs plus the rollout workers' on the cluster; e.g. configs/gsm8k_qwen_fsdp2.yaml (8 + 8 GPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${RAY_ADDRESS:-}" ]; then
  echo "ray_job_submit.sh: set RAY_ADDRESS to the job server of the cluster, e.g. http://HEAD:8265" >&2
  exit 2
fi
ray_cli=ray
[ -x .venv/bin/ray ] && ray_cli=.venv/bin/ray
# Virtual environments (also the symlinked .venv*), run outputs and caches stay behind.
excludes='[".venv*", ".git", "runs", "**/__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "*.egg-info"]'
# shellcheck disable=SC2086  # RL_DIV_JOB_ARGS is a list of options
exec "$ray_cli" job submit --address "$RAY_ADDRESS" --working-dir . \
  --runtime-env-json "{\"excludes\": $excludes}" ${RL_DIV_JOB_ARGS:-} \
  -- python -m rl_div.cli train "$@" --address auto
