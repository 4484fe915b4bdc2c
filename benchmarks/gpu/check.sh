#!/usr/bin/env bash
# The GPU check, one command on a machine with a GPU and no network (see the README, "GPU inference"):
#
#   bash benchmarks/gpu/check.sh [check.py options]      # e.g. --wells 60 --train-cells 4096
#
# Installs the wheels in benchmarks/gpu/wheels (made here by download_wheels.sh; kept out of git)
# that the machine lacks, then runs check.py with Keras on PyTorch (KERAS_BACKEND=jax for JAX).
set -euo pipefail
cd "$(dirname "$0")/../.."
wheels=benchmarks/gpu/wheels
if compgen -G "$wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --find-links "$wheels" "$wheels"/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND="${KERAS_BACKEND:-torch}"
export TF_CPP_MIN_LOG_LEVEL=2
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec python3 benchmarks/gpu/check.py "$@"
