"""Multi-process start-up: `jax.distributed.initialize` from config or the environment.

On Cloud TPU and under SLURM, JAX finds the coordinator, process count and process id itself;
elsewhere (plain GPU hosts, localhost tests) they come from `distributed.*` in the config.
Nothing waits forever: a worker that cannot reach the coordinator within `distributed.timeout_s`
stops with a one-line error naming it; a coordinator whose peers never register is ended by
JAX itself (DEADLINE_EXCEEDED) after the same timeout.
"""

import os
import socket
import sys
import time

import jax

from llm_jax.errors import UserError, check

# Environment markers under which jax.distributed.initialize() detects the cluster by itself.
_AUTO_DETECTED = ('SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS')


class DistributedError(UserError, RuntimeError):
  """Multi-process start-up failed; the message says which setting to check."""


def wanted(dist_cfg) -> bool:
  """True when this run spans several processes."""
  return dist_cfg.num_processes > 1 or (
    dist_cfg.auto_detect and any(v in os.environ for v in _AUTO_DETECTED)
  )


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Returns once `address` accepts connections; DistributedError after `timeout_s`.

  JAX aborts the whole process (not an exception) when it cannot register with the coordinator,
  so workers check reachability first to fail with a readable message.
  """
  host, _, port = address.rpartition(':')
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=1):
        return
    except OSError as e:
      if time.monotonic() > deadline:
        raise DistributedError(
          f'could not reach the coordinator {address} within distributed.timeout_s={timeout_s}:'
          f' {e.strerror or e}'
        ) from None
      time.sleep(0.2)


def validate(d) -> None:
  """Checks `distributed.*` alone: it is needed before any device can be counted."""
  check(d.num_processes >= 1, f'distributed.num_processes={d.num_processes} must be >= 1')
  check(
    0 <= d.process_id < d.num_processes,
    f'distributed.process_id={d.process_id} must be in [0, {d.num_processes})',
  )
  check(
    d.num_processes == 1 or d.coordinator_address.rpartition(':')[2].isdigit(),
    'distributed.coordinator_address (host:port) is required when num_processes > 1',
  )
  check(d.timeout_s > 0, f'distributed.timeout_s={d.timeout_s} must be positive')


def initialize(dist_cfg) -> None:
  """Joins the other processes of this run, if there are any; a no-op for one process."""
  validate(dist_cfg)
  if not wanted(dist_cfg):
    return
  explicit = dist_cfg.num_processes > 1
  if explicit:
    print(
      f'llm-jax: joining {dist_cfg.coordinator_address} as process {dist_cfg.process_id} of'
      f' {dist_cfg.num_processes} (distributed.timeout_s={dist_cfg.timeout_s})',
      file=sys.stderr,
    )
    if dist_cfg.process_id != 0:
      _wait_for_coordinator(dist_cfg.coordinator_address, dist_cfg.timeout_s)
  try:
    jax.distributed.initialize(
      coordinator_address=dist_cfg.coordinator_address if explicit else None,
      num_processes=dist_cfg.num_processes if explicit else None,
      process_id=dist_cfg.process_id if explicit else None,
      initialization_timeout=dist_cfg.timeout_s,
    )
  except Exception as e:  # noqa: BLE001 -- JAX raises several types; all mean the same here
    where = dist_cfg.coordinator_address if explicit else 'the auto-detected coordinator'
    raise DistributedError(
      f'could not join {where} as process {dist_cfg.process_id} of {dist_cfg.num_processes}'
      f' within distributed.timeout_s={dist_cfg.timeout_s}: {str(e).splitlines()[0]}'
    ) from None
