# shellcheck shell=bash
# Helpers sourced by the scripts: settings, dry-run aware command runner, ssh to workers.
set -euo pipefail
# shellcheck source=tpu_scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# run CMD...: print CMD; execute it unless DRY_RUN=1.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "${DRY_RUN}" != 1 ]]; then
    "$@"
  fi
}

# on_workers WORKER COMMAND: a shell command on one worker (0, 1, ...) or on all of them.
on_workers() {
  local worker="$1" command="$2"
  run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
    --worker="${worker}" --command="${command}"
}
