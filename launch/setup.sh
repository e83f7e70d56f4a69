#!/usr/bin/env bash
# Create .venv and install rl_div with its test tools. Idempotent; ~90 s on a fresh CPU machine.
#   bash launch/setup.sh            # CPU machine: keeps torch at the local CPU build (2.13.0)
#   RL_DIV_TORCH=keep bash launch/setup.sh   # keep whatever torch is already there (a CUDA build)
# Extra arguments are pip extras, e.g. `bash launch/setup.sh vllm` on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RL_DIV_VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
extras="dev${*:+,$(IFS=,; echo "$*")}"
mode=${RL_DIV_TORCH:-auto}
if [ "$mode" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then mode=keep; else mode=cpu; fi
fi
if [ "$mode" = cpu ]; then
  # The CPU wheel first, then a constraint so nothing upgrades it to a CUDA build.
  pip install -q "torch==2.13.0"
  pip install -q -e ".[${extras}]" -c constraints-cpu.txt
  # Their PyPI builds are CUDA-linked and break `import transformers` next to a CPU torch. On a GPU
  # machine (mode keep) they match the CUDA torch and vLLM pins them: they stay.
  pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
else
  pip install -q -e ".[${extras}]"
fi
"$VENV/bin/python" -c "import torch, transformers, rl_div, rewards; print('rl_div ready: torch', torch.__version__)"
