import json
import shutil

import jax
import numpy as np
import pytest

from llm_jax import checkpoint, config
from llm_jax.train import loop
from tests.conftest import tiny_config


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
  ckpt = checkpoint.Checkpointer(tmp_path, cfg.ckpt)
  assert ckpt.latest_step() == 20
  ckpt.close()
  # Simulate a crash right after the step-10 checkpoint: later state and metrics are lost.
  shutil.rmtree(tmp_path / 'checkpoints' / '20')
  uninterrupted = rows(tmp_path)
  kept = [r for r in uninterrupted if r['step'] <= 10]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in kept))

  resumed = loop.train(cfg, tmp_path)
  assert without_timings(rows(tmp_path)) == without_timings(uninterrupted)
  assert resumed['loss'] == first['loss'] and resumed['eval_loss'] == first['eval_loss']


def test_checkpoint_restores_onto_another_mesh(tmp_path):
  cfg = tiny_config(steps=6, log_every=2)
  loop.train(cfg, tmp_path)  # saved under data=8
  ckpt = checkpoint.Checkpointer(tmp_path, cfg.ckpt)
  saved = ckpt.restore(6, loop.Trainer(cfg, tmp_path).steps.abstract)
  cfg.mesh.update(data=1, fsdp=4, tensor=2)
  target = loop.Trainer(cfg, tmp_path).steps.abstract
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
  cfg.model.n_embd = 32
  with pytest.raises(config.ConfigError, match='model.n_embd=32 but the checkpoints in .* have 64'):
    loop.train(cfg, tmp_path)
  # Past the config check (config.json lost), Orbax's shape mismatch is reported by checkpoint.
  (tmp_path / 'config.json').unlink()
  with pytest.raises(checkpoint.CheckpointError, match='checkpoints/6 does not fit this config'):
    loop.train(cfg, tmp_path)
