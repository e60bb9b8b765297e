#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach a package index but brings its own CUDA JAX (Python
# 3.12, jax 0.11): what llm_jax needs beyond such an image, downloaded here into DIR (default
# .whl, which git ignores). There, before the suite:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   bash benchmarks/gpu_suite.sh OUTDIR
#
# The image's flax did not import with its jax 0.11.2, so a flax that does (with the optax and
# orbax llm_jax is tested with) travels too. W&B and TFDS are imported only when used.
set -euo pipefail

dir="${1:-.whl}"
mkdir -p "${dir}"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --dest "${dir}" \
  ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 \
  flax==0.12.12 optax==0.2.8 orbax-checkpoint==0.12.8
ls "${dir}"
du -sh "${dir}"
