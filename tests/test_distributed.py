"""Two processes on localhost, 4 CPU devices each, train over one global mesh."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import REPO

TRAIN = [
  sys.executable,
  '-m',
  'llm_jax',
  'train',
  '--config',
  'configs/gpt_tiny.py',
  '--config.train.steps=6',
  '--config.optimizer.warmup_steps=2',
  '--config.train.log_every=2',
  '--config.eval.every_steps=0',
  '--config.eval.batches=2',
  '--config.sample.max_new_tokens=0',
  '--config.wandb.mode=disabled',
]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def env(devices: int) -> dict:
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def losses(workdir):
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [r['loss'] for r in rows if 'loss' in r], [
    r['eval_loss'] for r in rows if 'eval_loss' in r
  ]


# Not tests.conftest.tiny_config, which would give each worker process 8 devices: the same
# settings, with `overrides` ({section: {key: value}}) on top.
WORKER = """
import json, sys
from llm_jax import config, distributed
from llm_jax.train import loop

num_processes, process_id, address, workdir, overrides = sys.argv[1:]
num_processes, process_id = int(num_processes), int(process_id)
cfg = config.preset('gpt_tiny')
cfg.train.update(steps=30, batch_size=16, log_every=10)
cfg.eval.update(every_steps=0, batches=2, batch_size=16)
cfg.optimizer.update(lr=3e-3, warmup_steps=5)
cfg.sample.max_new_tokens = 0
cfg.wandb.mode = 'disabled'
for section, values in json.loads(overrides).items():
  cfg[section].update(values)
cfg.distributed.update(
  num_processes=num_processes, process_id=process_id, coordinator_address=address
)
if num_processes > 1:
  cfg.mesh.dcn_data = 2  # a hybrid mesh: one data factor per process
distributed.initialize(cfg.distributed)
print(json.dumps(loop.train(cfg, workdir)))
"""
SHORT = {'train': {'steps': 6, 'log_every': 2}, 'optimizer': {'warmup_steps': 2}}


def worker(num_processes, process_id, address, workdir, devices, overrides=SHORT):
  args = [str(num_processes), str(process_id), address, str(workdir), json.dumps(overrides)]
  return subprocess.Popen(
    [sys.executable, '-c', WORKER, *args],
    cwd=REPO,
    env=env(devices),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def summary(proc):
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  single = summary(worker(1, 0, '', tmp_path / 'single', devices=8))
  address = f'127.0.0.1:{free_port()}'
  procs = [worker(2, i, address, tmp_path / 'multi', devices=4) for i in range(2)]
  first, second = [summary(p) for p in procs]
  same = ('loss', 'eval_loss', 'grad_norm', 'lr')  # timings differ per process, results do not
  assert {k: first[k] for k in same} == {k: second[k] for k in same}
  assert first['loss'] == pytest.approx(single['loss'], abs=1e-5)
  assert first['eval_loss'] == pytest.approx(single['eval_loss'], abs=1e-5)
  multi, one = losses(tmp_path / 'multi'), losses(tmp_path / 'single')
  np.testing.assert_allclose(multi[0] + multi[1], one[0] + one[1], atol=1e-5)


def test_a_missing_peer_is_a_clear_error_not_a_hang(tmp_path):
  result = subprocess.run(
    TRAIN
    + [
      '--workdir',
      str(tmp_path),
      '--config.distributed.num_processes=2',
      '--config.distributed.process_id=1',
      '--config.distributed.timeout_s=3',
      f'--config.distributed.coordinator_address=127.0.0.1:{free_port()}',
    ],
    cwd=REPO,
    env=env(4),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('llm-jax train: error: could not reach the coordinator 127.0.0.1:')
  assert 'distributed.timeout_s=3' in last


def two_processes(workdir, steps):
  """A 2-process run of `steps` steps, one device a process, saved every 50 steps."""
  address = f'127.0.0.1:{free_port()}'
  overrides = {'train': {'steps': steps}, 'eval': {'batches': 0}, 'ckpt': {'every_steps': 50}}
  return [worker(2, i, address, workdir, devices=1, overrides=overrides) for i in range(2)]


@pytest.mark.slow
def test_sigterm_stops_every_process_at_the_same_step_and_the_rerun_resumes_exactly(tmp_path):
  """Preemption of a 2-process run: SIGTERM to one process, or to both a second apart (as
  tpu_scripts/stop.sh signals workers one by one). JAX's preemption sync point makes both stop
  after the same step and save it together; neither hangs in the collective save."""
  from tests.conftest import tiny_config
  from tests.test_checkpoint import rows, without_timings
  from tests.test_faults import final_state

  steps = 200
  straight = [summary(p) for p in two_processes(tmp_path / 'straight', steps)]
  assert all('preempted_at' not in s for s in straight)
  for signalled in ('one', 'both'):
    workdir = tmp_path / signalled
    procs = two_processes(workdir, steps)
    deadline = time.monotonic() + 240
    while not (workdir / 'checkpoints' / '50').exists():
      assert all(p.poll() is None for p in procs), procs[0].communicate()[1]
      assert time.monotonic() < deadline
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    if signalled == 'both':
      time.sleep(1.0)
      procs[0].send_signal(signal.SIGTERM)
    stopped = {summary(p).get('preempted_at') for p in procs}  # both exit 0, within the timeout
    assert len(stopped) == 1 and None not in stopped, stopped
    [at] = stopped
    assert 50 <= at < steps and (workdir / 'checkpoints' / str(int(at))).exists()
    resumed = [summary(p) for p in two_processes(workdir, steps)]
    assert all('preempted_at' not in s for s in resumed)
    assert without_timings(rows(workdir)) == without_timings(rows(tmp_path / 'straight'))
    got, want = (
      jax.tree.leaves(final_state(d, tiny_config(), steps))
      for d in (workdir, tmp_path / 'straight')
    )
    for a, b in zip(got, want, strict=True):
      np.testing.assert_array_equal(a, b)  # bit-identical params and optimizer state
