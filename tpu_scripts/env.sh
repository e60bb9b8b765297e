# shellcheck shell=bash
# Settings for every script here. Each can be overridden from the environment:
#   TPU_NAME=my-slice ACCELERATOR=v5litepod-64 bash tpu_scripts/create.sh
: "${PROJECT:=$(gcloud config get-value project 2>/dev/null || true)}"
: "${ZONE:=us-central2-b}"
: "${TPU_NAME:=llm-jax}"
: "${ACCELERATOR:=v4-8}"               # v4-32, v5litepod-64, v5p-128, ...
: "${RUNTIME:=tpu-ubuntu2204-base}"    # TPU VM software version
: "${SPOT:=0}"                         # 1: spot capacity (cheaper, preemptible)
: "${QUEUED:=0}"                       # 1: a queued resource (waits for capacity)
: "${REPO_URL:=https://github.com/llm-jax/llm_jax.git}"
: "${REMOTE_DIR:=llm_jax}"             # checkout directory on every worker
: "${DATA_URL:=}"                      # gs://... prepared data that setup copies to every worker
: "${DATA_DIR:=data}"                  # where on each worker (relative to the home directory)
: "${DRY_RUN:=0}"                      # 1: print the gcloud commands instead of running them
export PROJECT ZONE TPU_NAME ACCELERATOR RUNTIME SPOT QUEUED REPO_URL REMOTE_DIR DATA_URL DATA_DIR
export DRY_RUN
