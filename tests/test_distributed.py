"""Two processes on localhost, 4 CPU devices each, train over one global mesh."""

import json
import os
import socket
import subprocess
import sys

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


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  single = subprocess.run(
    TRAIN + ['--workdir', str(tmp_path / 'single')],
    cwd=REPO,
    env=env(8),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert single.returncode == 0, single.stderr

  port, workdir = free_port(), tmp_path / 'multi'
  procs = [
    subprocess.Popen(
      TRAIN
      + [
        '--workdir',
        str(workdir),
        '--config.distributed.num_processes=2',
        f'--config.distributed.process_id={i}',
        f'--config.distributed.coordinator_address=127.0.0.1:{port}',
        '--config.mesh.dcn_data=2',  # hybrid mesh: one data factor per process
      ],
      cwd=REPO,
      env=env(4),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err
  # Process 0 logs; both print the same final line, computed over the global mesh.
  finals = [next(line for line in out.splitlines() if line.startswith('final')) for out, _ in outs]
  assert finals[0] == finals[1]
  assert finals[0] in single.stdout
  multi, one = losses(workdir), losses(tmp_path / 'single')
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
