#!/usr/bin/env bash
set -euo pipefail
# Start a run on every worker, detached, one log per worker:
#   tpu_scripts/launch.sh RUN_NAME -- llm-jax train --config ... --workdir gs://bucket/runs/NAME
source "$(dirname "$0")/common.sh"

name="${1:?usage: launch.sh RUN_NAME -- COMMAND...}"
shift
if [[ "${1:-}" == "--" ]]; then
  shift
fi
if [[ $# -eq 0 ]]; then
  echo "launch.sh: no command after --" >&2
  exit 2
fi
printf -v command ' %q' "$@"
on_workers all "cd ${REMOTE_DIR} && . .venv/bin/activate && mkdir -p logs && \
nohup${command} > logs/${name}.\$(hostname).log 2>&1 < /dev/null &"
