#!/usr/bin/env bash
set -euo pipefail
# Create the TPU VM slice (or queue a request for it with QUEUED=1).
source "$(dirname "$0")/common.sh"

flags=(--project="${PROJECT}" --zone="${ZONE}" --accelerator-type="${ACCELERATOR}")
if [[ "${SPOT}" == 1 ]]; then
  flags+=(--spot)
fi
if [[ "${QUEUED}" == 1 ]]; then
  run gcloud compute tpus queued-resources create "${TPU_NAME}" --node-id="${TPU_NAME}" \
    --runtime-version="${RUNTIME}" "${flags[@]}"
else
  run gcloud compute tpus tpu-vm create "${TPU_NAME}" --version="${RUNTIME}" "${flags[@]}"
fi
