"""Fault injection: damaged checkpoints, failures that are not damage, a full disk, kill -9.

Whatever happens, a run ends with its final step saved, its logged losses and final state equal
an uninterrupted run's, and nothing it had saved is deleted.
"""

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from llm_jax import checkpoint, cli, rundir, tracking
from llm_jax.train import loop
from llm_jax.train import trainer as trainer_lib
from tests.conftest import REPO, tiny_config
from tests.test_checkpoint import _restore, rows, without_timings

STEP = 'checkpoints/20'


def truncate(path):
  path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def garble(path):  # same size, other bytes
  path.write_bytes(b'\x07' * len(path.read_bytes()))


def delete(path):
  shutil.rmtree(path) if path.is_dir() else path.unlink()


# Every kind of file a step holds: (glob under the step, what is done to each match).
DAMAGE = {
  'array data truncated': ('state/ocdbt.process_0/d/*', truncate),
  'array data garbled': ('state/ocdbt.process_0/d/*', garble),
  'array data deleted': ('state/ocdbt.process_0/d/*', delete),
  'largest array file deleted': ('state/ocdbt.process_0/d/*', 'largest'),
  'index (manifest.ocdbt) deleted': ('state/manifest.ocdbt', delete),
  'index (manifest.ocdbt) garbled': ('state/manifest.ocdbt', garble),
  'tree metadata (_METADATA) corrupt': ('state/_METADATA', garble),
  'tree metadata (_METADATA) deleted': ('state/_METADATA', delete),
  'array metadata corrupt': ('state/array_metadatas/*', garble),
  'saved config corrupt': ('config/metadata', garble),
  'saved config deleted': ('config', delete),
  'state item deleted': ('state', delete),
  'step emptied': ('*', delete),
  # Orbax restores without these: the step stays and is read as it is.
  'process index deleted': ('state/ocdbt.process_0/manifest.ocdbt', delete),
  'sharding file deleted': ('state/_sharding', delete),
  'step metadata corrupt': ('_CHECKPOINT_METADATA', garble),
  'commit marker deleted': ('commit_success.txt', delete),
}


def damage(step_dir, kind):
  pattern, how = DAMAGE[kind]
  files = sorted(step_dir.glob(pattern))
  assert files, f'{kind}: nothing matches {pattern}'
  if how == 'largest':
    files, how = [max(files, key=lambda f: f.stat().st_size)], delete
  for f in files:
    how(f)


def config():
  cfg = tiny_config(steps=20, log_every=5)
  cfg.ckpt.update(every_steps=10, max_to_keep=5)
  return cfg


def final_state(workdir, cfg, step=20):
  """The training state `workdir` saved at `step`, on the host."""
  return jax.device_get(_restore(workdir, cfg, step, trainer_lib.Trainer(cfg, None).steps.abstract))


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """An uninterrupted 20-step run: (its workdir, its metric rows, its final state)."""
  workdir = tmp_path_factory.mktemp('straight')
  cfg = config()
  loop.train(cfg, workdir)
  return workdir, rows(workdir), final_state(workdir, cfg)


def assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('kind', DAMAGE)
def test_a_damaged_step_is_moved_aside_and_the_run_ends_with_it_saved(
  tmp_path, straight, kind, caplog
):
  workdir, want_rows, want_state = straight
  run = tmp_path / 'run'
  shutil.copytree(workdir, run)
  damage(run / STEP, kind)
  cfg = config()
  loop.train(cfg, run)
  aside = sorted(p.name for p in (run / 'checkpoints').glob('20.unreadable-*'))
  warnings = [r.getMessage() for r in caplog.records if 'unreadable' in r.getMessage()]
  if kind in list(DAMAGE)[-4:]:  # readable despite the damage
    assert not aside and not warnings
  else:
    assert len(aside) == 1 and len(warnings) == 1  # one line naming the step and the reason
    assert warnings[0].count('\n') == 0 and 'checkpoints/20 is unreadable: ' in warnings[0]
    assert f'moved to {run / "checkpoints" / aside[0]}' in warnings[0]
  assert without_timings(rows(run)) == without_timings(want_rows)
  assert_same_state(final_state(run, cfg), want_state)  # step 20 saved again, bit-identical


def test_readers_take_the_newest_readable_step_and_change_nothing(tmp_path, straight, capsys):
  workdir, _, _ = straight
  run = tmp_path / 'run'
  shutil.copytree(workdir, run)
  damage(run / STEP, 'array data truncated')
  before = sorted(p.name for p in (run / 'checkpoints').iterdir())

  assert cli.main(['llm-jax', 'eval', '--workdir', str(run)]) == 0
  assert 'step                 10' in capsys.readouterr().out
  assert cli.main(['llm-jax', 'sample', '--workdir', str(run), '--max_new_tokens', '5']) == 0
  assert '(step 10)' in capsys.readouterr().out
  out = tmp_path / 'export'
  assert cli.main(['llm-jax', 'export', '--workdir', str(run), '--out', str(out)]) == 0
  assert sorted(p.name for p in (out / 'checkpoints').iterdir()) == ['10']
  finetune = tiny_config(steps=2, log_every=1)
  finetune.ckpt.init_from = str(run)
  loop.train(finetune, tmp_path / 'finetune')
  assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == before  # readers move nothing


def test_a_failure_that_is_not_damage_is_raised_and_loses_nothing(tmp_path, straight, monkeypatch):
  """Out of memory, a storage timeout or a bug while restoring says nothing about the step: it
  is raised at once, with no older step tried, nothing moved and no metric row dropped."""
  workdir, _, _ = straight
  run = tmp_path / 'run'
  shutil.copytree(workdir, run)
  logged = (run / rundir.METRICS).read_text()

  for error in (
    ValueError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.5GiB'),
    ValueError('DEADLINE_EXCEEDED: Error reading "x" in gs://bucket/run: timed out'),
    RuntimeError('a bug'),
  ):

    def failing(self, step, args, error=error):
      raise error

    monkeypatch.setattr(ocp.CheckpointManager, 'restore', failing)
    with pytest.raises(type(error), match=str(error)[:20]):
      loop.train(config(), run)
    assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == ['10', '20']
    assert (run / rundir.METRICS).read_text() == logged


def test_metric_rows_are_rewritten_whole_or_not_at_all(tmp_path, monkeypatch):
  path = tmp_path / rundir.METRICS
  path.write_text(''.join(json.dumps({'step': s, 'loss': 1.0}) + '\n' for s in (5, 10, 15, 20)))
  before = path.read_text()

  def crash(fd):
    raise OSError(errno.EIO, 'Input/output error')

  monkeypatch.setattr(os, 'fsync', crash)  # the rewrite dies before it is complete
  with pytest.raises(OSError):
    tracking.drop_rows_after(tmp_path, 10)
  assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
  monkeypatch.undo()
  tracking.drop_rows_after(tmp_path, 10)
  assert [json.loads(line)['step'] for line in path.read_text().splitlines()] == [5, 10]


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_last_step(
  tmp_path, straight, monkeypatch, capfd
):
  workdir, want_rows, want_state = straight
  saves = []
  real = json_checkpoint_handler.JsonCheckpointHandler._save_fn

  async def disk_full_from_the_second_save(self, x, directory):
    saves.append(directory)
    if len(saves) >= 2:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return await real(self, x, directory)

  monkeypatch.setattr(
    json_checkpoint_handler.JsonCheckpointHandler, '_save_fn', disk_full_from_the_second_save
  )
  run = tmp_path / 'run'
  args = ['llm-jax', 'train', '--config', str(REPO / 'configs/gpt_tiny.py'), '--workdir', str(run)]
  args += ['--config.train.steps=20', '--config.train.log_every=5', '--config.ckpt.every_steps=10']
  args += ['--config.eval.batches=2', '--config.eval.every_steps=0', '--config.ckpt.max_to_keep=5']
  args += ['--config.optimizer.warmup_steps=5', '--config.sample.max_new_tokens=0']
  args += ['--config.wandb.mode=disabled', '--config.xla.cache_dir=']
  assert cli.main(args) == 2
  err = capfd.readouterr().err
  assert 'Traceback' not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith('llm-jax train: error: saving checkpoint step 20 to ')
  assert 'No space left on device' in last and last.endswith('checkpoints/10')
  assert [p.name for p in (run / 'checkpoints').iterdir() if p.name.isdigit()] == ['10']
  monkeypatch.undo()  # space again: the rerun resumes from step 10 and saves step 20
  assert cli.main(args) == 0
  assert without_timings(rows(run)) == without_timings(want_rows)
  assert_same_state(final_state(run, config()), want_state)


def kill_run(workdir, *extra):
  args = [sys.executable, '-m', 'llm_jax', 'train', '--config', 'configs/gpt_tiny.py']
  args += ['--workdir', str(workdir), '--config.train.steps=160', '--config.train.log_every=10']
  args += ['--config.ckpt.every_steps=20', '--config.ckpt.max_to_keep=2']
  args += ['--config.eval.every_steps=40', '--config.sample.max_new_tokens=0', *extra]
  env = dict(os.environ, XLA_FLAGS='', PYTHONUNBUFFERED='1')  # one CPU device: fast steps
  return subprocess.Popen(
    args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )


def latest(workdir) -> int:
  """The newest step saved in `workdir` (0: none)."""
  steps = [int(p.name) for p in (workdir / 'checkpoints').glob('*') if p.name.isdigit()]
  return max(steps, default=0)


def saving(workdir) -> bool:
  """Whether an asynchronous save is under way (Orbax writes it to a temporary directory)."""
  with os.scandir(workdir / 'checkpoints') as entries:
    return any('.orbax-checkpoint-tmp' in e.name for e in entries)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_finish_equals_an_uninterrupted_run(tmp_path):
  straight = kill_run(tmp_path / 'straight')
  assert straight.wait(timeout=300) == 0, straight.stderr.read()
  rng = random.Random(0)
  killed = tmp_path / 'killed'
  moments = []
  for how in ('between saves', 'during a save', 'between saves', 'during a save'):
    before = latest(killed)
    proc = kill_run(killed)
    deadline = time.monotonic() + 240
    while latest(killed) <= before:  # this run has saved a step of its own
      assert proc.poll() is None, proc.stderr.read()
      assert time.monotonic() < deadline
      time.sleep(0.005)
    if how == 'between saves':
      time.sleep(rng.uniform(0.0, 0.3))
    else:
      while proc.poll() is None and not saving(killed) and time.monotonic() < deadline:
        time.sleep(0.0005)
    proc.kill()  # SIGKILL: no handler, no save, no cleanup
    proc.wait()
    moments.append((how, latest(killed)))
  finish = kill_run(killed)
  assert finish.wait(timeout=300) == 0, finish.stderr.read()
  assert len({step for _, step in moments}) == len(moments), moments  # each at a later step
  assert without_timings(rows(killed)) == without_timings(rows(tmp_path / 'straight'))
  cfg = tiny_config()
  for workdir in (killed, tmp_path / 'straight'):
    ckpt = checkpoint.Checkpointer(workdir, cfg.ckpt)
    assert ckpt.latest_step() == 160
    ckpt.close()
  assert_same_state(final_state(killed, cfg, 160), final_state(tmp_path / 'straight', cfg, 160))
