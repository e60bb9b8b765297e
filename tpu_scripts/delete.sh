#!/usr/bin/env bash
set -euo pipefail
# Delete the slice (and its queued resource, with QUEUED=1).
source "$(dirname "$0")/common.sh"

if [[ "${QUEUED}" == 1 ]]; then
  run gcloud compute tpus queued-resources delete "${TPU_NAME}" --project="${PROJECT}" \
    --zone="${ZONE}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" --quiet
fi
