#!/usr/bin/env bash
set -euo pipefail
# Install llm_jax at a commit on every worker: tpu_scripts/setup.sh COMMIT
source "$(dirname "$0")/common.sh"

commit="${1:?usage: setup.sh COMMIT}"
on_workers all "set -e; [ -d ${REMOTE_DIR} ] || git clone ${REPO_URL} ${REMOTE_DIR}; \
cd ${REMOTE_DIR} && git fetch -q origin && git checkout -q ${commit} && \
python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[gcs]' 'jax[tpu]'"
if [[ -n "${DATA_URL}" ]]; then
  # Shards are memory-mapped from local disk: every worker gets its own copy.
  on_workers all "mkdir -p ${DATA_DIR} && gcloud storage cp -r ${DATA_URL} ${DATA_DIR}/"
fi
