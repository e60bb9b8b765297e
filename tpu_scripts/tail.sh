#!/usr/bin/env bash
set -euo pipefail
# Follow a run's log on one worker (default 0): tpu_scripts/tail.sh RUN_NAME [WORKER]
source "$(dirname "$0")/common.sh"

name="${1:?usage: tail.sh RUN_NAME [WORKER]}"
on_workers "${2:-0}" "tail -n 100 -F ${REMOTE_DIR}/logs/${name}.*.log"
