import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from llm_jax import checkpoint, cli, config
from llm_jax.inference import load
from llm_jax.train import loop
from llm_jax.train import trainer as trainer_lib
from tests.conftest import REPO, tiny_config
from tests.test_gpt import assert_close, stacked


def rows(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def without_timings(metric_rows):
  timings = ('tokens_per_sec', 'step_time', 'mfu')
  return [{k: v for k, v in r.items() if k not in timings} for r in metric_rows]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  cfg = tiny_config(steps=20, log_every=5)
  cfg.model.dropout = 0.1  # the dropout stream must resume too
  cfg.ckpt.update(every_steps=10, max_to_keep=5)
  first = loop.train(cfg, tmp_path)
  abstract = trainer_lib.Trainer(cfg, None).steps.abstract
  final_state = lambda: jax.device_get(_restore(tmp_path, cfg, 20, abstract))
  straight = final_state()
  # Simulate a crash right after the step-10 checkpoint: the later state is lost (the restart
  # drops metric rows past step 10 itself and logs them again).
  shutil.rmtree(tmp_path / 'checkpoints' / '20')
  uninterrupted = rows(tmp_path)

  resumed = loop.train(cfg, tmp_path)
  assert without_timings(rows(tmp_path)) == without_timings(uninterrupted)
  assert resumed['loss'] == first['loss'] and resumed['eval_loss'] == first['eval_loss']
  for a, b in zip(jax.tree.leaves(final_state()), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(a, b)  # bit-identical params and optimizer state


def test_a_run_resumes_with_its_layers_stacked_the_other_way(tmp_path):
  """Checkpoints of listed layers resume a run with scan_layers, and stacked ones load into a
  model of listed layers: same numbers, other layout."""
  cfg = tiny_config(steps=20, log_every=5)
  cfg.ckpt.update(every_steps=10, max_to_keep=5)
  loop.train(cfg, tmp_path)
  listed = trainer_lib.Trainer(cfg, None)
  straight = _restore(tmp_path, cfg, 20, listed.steps.abstract)
  uninterrupted = rows(tmp_path)
  shutil.rmtree(tmp_path / 'checkpoints' / '20')

  cfg.model.scan_layers = True
  loop.train(cfg, tmp_path)  # resumes from the listed step 10, saves a stacked step 20
  stacked_state = _restore(tmp_path, cfg, 20, trainer_lib.Trainer(cfg, None).steps.abstract)
  for got, want in zip(rows(tmp_path), uninterrupted, strict=True):
    assert got['step'] == want['step']
    np.testing.assert_allclose(got.get('loss', 0), want.get('loss', 0), rtol=1e-5)
  trees = lambda s: [s.params, s.opt_state[1][0].mu, s.opt_state[1][0].nu]  # adamw's moments
  for got, want in zip(trees(stacked_state), trees(straight), strict=True):
    got, want = nnx.to_pure_dict(got), stacked(nnx.to_pure_dict(want))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    # Scan and loop round differently, and Adam amplifies that where gradients are near 0.
    assert_close(jax.tree.leaves(got), jax.tree.leaves(want), rel=1e-3)

  cfg.model.scan_layers = False  # the stacked step 20 into listed layers
  _, params = load.load_params(
    tmp_path, listed.task.model_cfg, listed.mesh, cfg.mesh.rules, what='test'
  )
  jax.tree.map(
    np.testing.assert_array_equal,
    stacked(nnx.to_pure_dict(params)),
    nnx.to_pure_dict(stacked_state.params),
  )
  for layer in range(cfg.model.n_layer):
    assert params['blocks'][layer]['mlp']['fc']['kernel'][...].sharding.spec == (
      jax.sharding.PartitionSpec('fsdp', 'tensor')
    )


def _restore(workdir, cfg, step, abstract):
  ckpt = checkpoint.Checkpointer(workdir, cfg.ckpt)
  try:
    return ckpt.restore(step, abstract)
  finally:
    ckpt.close()


def test_checkpoint_restores_onto_another_mesh(tmp_path):
  cfg = tiny_config(steps=6, log_every=2)
  loop.train(cfg, tmp_path)  # saved under data=8
  ckpt = checkpoint.Checkpointer(tmp_path, cfg.ckpt)
  saved = ckpt.restore(6, trainer_lib.Trainer(cfg, tmp_path).steps.abstract)
  cfg.mesh.update(data=1, fsdp=4, tensor=2)
  target = trainer_lib.Trainer(cfg, tmp_path).steps.abstract
  resharded = ckpt.restore(6, target)
  ckpt.close()
  assert int(resharded.step) == 6
  for new, want, old in zip(
    jax.tree.leaves(resharded), jax.tree.leaves(target), jax.tree.leaves(saved), strict=True
  ):
    assert new.sharding == want.sharding
    np.testing.assert_array_equal(new, old)
  fc = resharded.params['blocks'][0]['mlp']['fc']['kernel'][...]
  assert fc.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')


def test_a_changed_model_is_a_clear_error(tmp_path):
  cfg = tiny_config(steps=6, log_every=3)
  loop.train(cfg, tmp_path)
  saved = json.loads((tmp_path / 'config.json').read_text())
  del saved['model']['type_vocab_size']  # a run from before the key existed had its default
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  assert 'eval_loss' in loop.train(cfg, tmp_path)  # resumed and evaluated, not refused
  cfg.model.n_embd = 32
  with pytest.raises(config.ConfigError, match='model.n_embd=32 but the checkpoints in .* have 64'):
    loop.train(cfg, tmp_path)
  # Past the config check (config.json lost), Orbax's shape mismatch is reported by checkpoint.
  (tmp_path / 'config.json').unlink()
  with pytest.raises(
    checkpoint.CheckpointError, match='checkpoints/6 cannot be restored: Requested shape'
  ):
    loop.train(cfg, tmp_path)


def train_cli(workdir, *extra):
  args = ['train', '--config', 'configs/gpt_tiny.py', '--workdir', str(workdir)]
  args += [
    '--config.train.steps=400',
    '--config.train.log_every=10',
    '--config.ckpt.every_steps=50',
  ]
  args += ['--config.eval.every_steps=0', '--config.sample.max_new_tokens=0', *extra]
  return [sys.executable, '-m', 'llm_jax', *args]


def wait_for_checkpoint(workdir, step, proc, timeout=240):
  deadline = time.monotonic() + timeout
  while not (workdir / 'checkpoints' / str(step)).exists():
    assert proc.poll() is None, proc.communicate()[1]
    assert time.monotonic() < deadline, f'no checkpoint {step} in time'
    time.sleep(0.2)


def start(workdir, *extra):
  env = dict(os.environ, XLA_FLAGS='', PYTHONUNBUFFERED='1')  # one CPU device: fast steps
  return subprocess.Popen(
    train_cli(workdir, *extra), cwd=REPO, env=env, stdout=subprocess.PIPE,
    stderr=subprocess.PIPE, text=True,
  )  # fmt: skip


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_0(tmp_path):
  proc = start(tmp_path)
  wait_for_checkpoint(tmp_path, 50, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  saved = int(re.search(r'preempted: saved step (\d+)', out)[1])
  assert 50 <= saved < 400
  assert (tmp_path / 'checkpoints' / str(saved)).exists()
  ckpt = checkpoint.Checkpointer(tmp_path, config.base_config().ckpt)
  assert ckpt.latest_step() == saved
  ckpt.close()


@pytest.mark.slow
def test_sigkill_then_restart_matches_a_straight_run(tmp_path):
  straight = subprocess.run(
    train_cli(tmp_path / 'straight', '--config.train.steps=120'), cwd=REPO, capture_output=True,
    text=True, env=dict(os.environ, XLA_FLAGS=''), timeout=300,
  )  # fmt: skip
  assert straight.returncode == 0, straight.stderr
  proc = start(tmp_path / 'killed', '--config.train.steps=120')
  wait_for_checkpoint(tmp_path / 'killed', 50, proc)
  proc.kill()  # SIGKILL: no chance to save
  proc.communicate()
  again = subprocess.run(
    train_cli(tmp_path / 'killed', '--config.train.steps=120'), cwd=REPO, capture_output=True,
    text=True, env=dict(os.environ, XLA_FLAGS=''), timeout=300,
  )  # fmt: skip
  assert again.returncode == 0, again.stderr
  assert 'resumed from' in again.stdout
  assert without_timings(rows(tmp_path / 'killed')) == without_timings(rows(tmp_path / 'straight'))


def test_an_interrupted_save_is_invisible(tmp_path):
  cfg = tiny_config(steps=10, log_every=5)
  loop.train(cfg, tmp_path)
  # What an interrupted async save leaves behind: a temporary directory, never a step.
  (tmp_path / 'checkpoints' / '20.orbax-checkpoint-tmp-1234').mkdir()
  ckpt = checkpoint.Checkpointer(tmp_path, cfg.ckpt)
  assert ckpt.all_steps() == [10]
  ckpt.close()


def test_keep_period_keeps_every_nth_step(tmp_path):
  cfg = tiny_config(steps=30, log_every=10)
  cfg.ckpt.update(every_steps=5, max_to_keep=1, keep_period=10)
  loop.train(cfg, tmp_path)
  ckpt = checkpoint.Checkpointer(tmp_path, cfg.ckpt)
  assert ckpt.all_steps() == [10, 20, 30]
  ckpt.close()


def test_export_then_init_from_starts_with_those_parameters(tmp_path):
  cfg = tiny_config(steps=10, log_every=5)
  loop.train(cfg, tmp_path / 'pretrain')
  code = cli.main(['llm-jax', 'export', '--workdir', str(tmp_path / 'pretrain'),
                   '--out', str(tmp_path / 'export')])  # fmt: skip
  assert code == 0
  assert (tmp_path / 'export' / 'tokenizer.json').exists()
  exported = sorted(p.name for p in (tmp_path / 'export' / 'checkpoints').iterdir())
  assert exported == ['10']

  trainer = trainer_lib.Trainer(cfg, None)
  for source in ('pretrain', 'export'):  # a run's workdir or its export
    _, params = load.load_params(
      tmp_path / source, trainer.task.model_cfg, trainer.mesh, cfg.mesh.rules, what=source
    )
    ckpt = checkpoint.Checkpointer(tmp_path / 'pretrain', cfg.ckpt)
    want = ckpt.restore(10, trainer.steps.abstract).params
    ckpt.close()
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(a, b)

  finetune = tiny_config(steps=6, log_every=3)
  finetune.ckpt.init_from = str(tmp_path / 'export')
  pretrained = loop.train(finetune, tmp_path / 'finetune')
  finetune.ckpt.init_from = ''
  scratch = loop.train(finetune, tmp_path / 'scratch')
  assert pretrained['loss'] < scratch['loss'] - 0.3  # it really started from trained weights


def test_init_from_a_missing_or_mismatched_source_is_a_clear_error(tmp_path):
  cfg = tiny_config(steps=6, log_every=3)
  cfg.ckpt.init_from = str(tmp_path / 'nowhere')
  with pytest.raises(checkpoint.CheckpointError, match='nowhere: no checkpoints/ there'):
    loop.train(cfg, tmp_path / 'a')
  loop.train(tiny_config(steps=6, log_every=3), tmp_path / 'small')
  cfg.ckpt.init_from = str(tmp_path / 'small')
  cfg.model.n_embd = 32
  with pytest.raises(checkpoint.CheckpointError, match='do not fit this model'):
    loop.train(cfg, tmp_path / 'b')


@pytest.mark.slow
def test_a_run_saved_on_8_devices_resumes_on_4(tmp_path):
  cfg = tiny_config(steps=6, log_every=2)
  loop.train(cfg, tmp_path / 'eight')
  shutil.copytree(tmp_path / 'eight', tmp_path / 'four')
  cfg.train.steps = 10
  loop.train(cfg, tmp_path / 'eight')  # continues on 8 devices
  args = ['train', '--config', 'configs/gpt_tiny.py', '--workdir', str(tmp_path / 'four')]
  args += ['--config.train.steps=10', '--config.train.log_every=2', '--config.eval.every_steps=0']
  args += [
    '--config.eval.batches=2',
    '--config.sample.max_new_tokens=0',
    '--config.wandb.mode=disabled',
  ]
  args += ['--config.optimizer.lr=3e-3', '--config.optimizer.warmup_steps=5']
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  four = subprocess.run([sys.executable, '-m', 'llm_jax', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)  # fmt: skip
  assert four.returncode == 0, four.stderr
  assert 'resumed from' in four.stdout and "'data': 4" in four.stdout
  losses = lambda d: [r['loss'] for r in rows(d) if 'loss' in r]
  np.testing.assert_allclose(losses(tmp_path / 'four'), losses(tmp_path / 'eight'), rtol=1e-5)


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
  cfg = tiny_config(steps=6, log_every=3)
  loop.train(cfg, tmp_path)
  for data_file in (tmp_path / 'checkpoints' / '6' / 'state').glob('ocdbt.process_*/d/*'):
    data_file.write_bytes(b'')
  with pytest.raises(checkpoint.CheckpointError, match='no readable checkpoint in .*checkpoints/6'):
    loop.train(cfg, tmp_path)
