#!/usr/bin/env bash
set -euo pipefail
# Stop the runs on every worker: SIGTERM, so each saves a checkpoint and exits 0.
source "$(dirname "$0")/common.sh"

on_workers all "pkill -TERM -f 'llm-jax train' || true"
