import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from llm_jax import checkpoint, compare, config, errors, sharding
from llm_jax.data import loader
from llm_jax.data.tokens import TokenStream
from llm_jax.models import configs as model_configs
from llm_jax.models import registry
from llm_jax.models.configs import GPTConfig
from llm_jax.train import hooks, loop, losses, optim
from llm_jax.train import trainer as trainer_lib
from tests.conftest import tiny_config

SMALL = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)


def read_rows(workdir):
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_loss_falls_and_metrics_are_written(tmp_path):
  cfg = tiny_config(steps=60)
  cfg.eval.every_steps = 30
  summary = loop.train(cfg, tmp_path)
  rows = read_rows(tmp_path)
  train_rows = [r for r in rows if 'loss' in r]
  eval_rows = [r for r in rows if 'eval_loss' in r]
  assert [r['step'] for r in train_rows] == [10, 20, 30, 40, 50, 60]
  assert [r['step'] for r in eval_rows] == [30, 60]
  assert train_rows[-1]['loss'] < train_rows[0]['loss'] - 0.5
  assert eval_rows[-1]['eval_loss'] < eval_rows[0]['eval_loss']
  assert summary['eval_loss'] == eval_rows[-1]['eval_loss']
  for key in ('lr', 'grad_norm', 'tokens_per_sec', 'step_time'):
    assert train_rows[-1][key] > 0
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['train']['steps'] == 60 and saved['model']['n_layer'] == 2
  assert (tmp_path / 'tokenizer.json').exists()


def test_same_seed_gives_identical_losses(tmp_path):
  cfg = tiny_config(steps=10, log_every=5)
  cfg.model.dropout = 0.1  # dropout masks must be reproducible too
  loop.train(cfg, tmp_path / 'a')
  loop.train(cfg, tmp_path / 'b')
  losses = lambda d: [r['loss'] for r in read_rows(d) if 'loss' in r]
  assert losses(tmp_path / 'a') == losses(tmp_path / 'b')
  cfg.train.seed = 1
  loop.train(cfg, tmp_path / 'c')
  assert losses(tmp_path / 'c') != losses(tmp_path / 'a')


def random_batch(batch_size, num_tokens=10_000, vocab=80) -> dict:
  tokens = np.random.default_rng(0).integers(0, vocab, num_tokens).astype(np.uint16)
  batches = loader.TrainBatches(TokenStream([tokens]), batch_size=batch_size, seq_len=64, seed=0)
  return batches(0).arrays()


def _one_step(cfg, batch, loss_fn=losses.lm_loss):
  """(initial params, params after one step, metrics) of `cfg`'s model on `batch`."""
  model_cfg = model_configs.from_section(cfg.model, 80)
  mesh = sharding.make_mesh(cfg.mesh)
  steps = trainer_lib.build_steps(cfg, model_cfg, mesh, loss_fn)
  state, train_step = steps.init(), steps.train
  initial = jax.device_get(state.params)
  put = lambda a: jax.device_put(a, trainer_lib.batch_sharding(mesh, ndim=a.ndim))
  state, metrics = train_step(state, jax.tree.map(put, batch))
  return initial, jax.device_get(state.params), jax.device_get(metrics)


def test_gradient_accumulation_matches_one_big_batch():
  batch = random_batch(32)
  start, whole, m_whole = _one_step(tiny_config(batch_size=32), batch)
  _, accum, m_accum = _one_step(tiny_config(batch_size=32, grad_accum_steps=4), batch)
  assert m_accum['loss'] == pytest.approx(m_whole['loss'], rel=1e-5)
  assert m_accum['grad_norm'] == pytest.approx(m_whole['grad_norm'], rel=1e-5)
  # Adam's first update is lr·g/(|g| + eps) per element: equal gradients up to roundoff give
  # equal updates, except where |g| is near eps. So the updates agree to 1% of the lr.
  lr = float(m_whole['lr'])
  assert lr > 0
  for a, b, s in zip(*map(jax.tree.leaves, (accum, whole, start)), strict=True):
    np.testing.assert_allclose(a - s, b - s, atol=0.01 * lr)


def weighted_loss(model, batch, key, rngs):
  """Cross-entropy over the positions `batch['weights']` marks, as MLM scores its chosen ones."""
  del key
  logits = model(batch['inputs'], rngs=rngs)
  weights = batch['weights']
  return losses.cross_entropy(logits, batch['targets'], weights), ({}, weights.sum())


def test_gradient_accumulation_weighs_each_scored_token_alike():
  """Microbatches that score different numbers of tokens: the accumulated loss and gradient are
  the whole batch's (a mean of microbatch means would weigh a token of a sparse one more)."""
  batch = random_batch(32)
  weights = np.zeros(batch['targets'].shape, np.float32)
  weights[::4, :] = 1  # microbatch 0 (rows 0, 4, 8, ...) scores every position
  weights[1::4, :2] = 1  # microbatches 1-3 score two positions or none
  weights[2::4, 5:7] = 1
  batch['weights'] = weights
  _, _, whole = _one_step(tiny_config(batch_size=32), batch, weighted_loss)
  _, _, accum = _one_step(tiny_config(batch_size=32, grad_accum_steps=4), batch, weighted_loss)
  assert accum['loss'] == pytest.approx(whole['loss'], rel=1e-5)
  assert accum['grad_norm'] == pytest.approx(whole['grad_norm'], rel=1e-5)


def test_overfits_one_batch():
  cfg = tiny_config(batch_size=8)
  cfg.optimizer.update(lr=1e-2, warmup_steps=10, weight_decay=0.0)
  cfg.train.steps = 150
  model_cfg = model_configs.from_section(cfg.model, 80)
  mesh = sharding.make_mesh(cfg.mesh)
  steps = trainer_lib.build_steps(cfg, model_cfg, mesh)
  state, train_step = steps.init(), steps.train
  batch = jax.device_put(random_batch(8, num_tokens=1000), trainer_lib.batch_sharding(mesh))
  for _ in range(cfg.train.steps):
    state, metrics = jax.block_until_ready(train_step(state, batch))
  # Random tokens start at ln(80) = 4.38 nats; memorising 512 of them drives the loss near 0.
  assert float(metrics['loss']) < 0.05


def test_weight_decay_skips_biases_and_norms_whatever_their_rank():
  params = {'kernel': np.ones((2, 2)), 'bias': np.ones(2), 'scale': np.ones(2)}
  assert optim.decay_mask(params) == {'kernel': True, 'bias': False, 'scale': False}
  for scan_layers in (False, True):  # qkv's bias is (3, heads, kv); scanning stacks everything
    model = registry.build(dataclasses.replace(SMALL, scan_layers=scan_layers), seed=0)
    mask = jax.tree_util.tree_flatten_with_path(optim.decay_mask(nnx.state(model, nnx.Param)))[0]
    names = lambda path: [getattr(k, 'key', getattr(k, 'name', None)) for k in path]
    decayed = {names(path)[-2] for path, on in mask if on}  # the last key is NNX's .value
    assert decayed == {'kernel', 'embedding'}
    assert len(decayed) < len(mask)


def test_schedule_warms_up_then_decays_to_the_floor():
  cfg = config.base_config().optimizer
  cfg.update(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
  lr = optim.schedule(cfg, 100)
  # nanoGPT's lr * (it + 1) / (warmup + 1): the first update already moves the parameters.
  assert [float(lr(i)) for i in (0, 1, 9)] == pytest.approx([1e-3 / 11, 2e-3 / 11, 10e-3 / 11])
  assert float(lr(10)) == pytest.approx(1e-3)
  assert float(lr(100)) == pytest.approx(1e-4)
  assert float(lr(55)) == pytest.approx(0.55e-3, rel=1e-3)  # cosine midpoint


def _poison_step(monkeypatch, bad_step):
  """Makes the batch of `bad_step` give a non-finite loss (a target id past the vocabulary)."""
  real = loader.TrainBatches.__call__

  def batch(self, step, rows=slice(None)):
    b = real(self, step, rows)
    if step == bad_step:
      return loader.Batch(b.inputs, np.full_like(b.targets, 10_000))
    return b

  monkeypatch.setattr(loader.TrainBatches, '__call__', batch)


def test_a_nonfinite_step_halts_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  _poison_step(monkeypatch, bad_step=7)  # the 8th update
  cfg = tiny_config(steps=20, log_every=5)
  cfg.ckpt.every_steps = 5
  with pytest.raises(errors.NonFiniteError, match=r'step 8: loss is not finite.*checkpoints/5$'):
    loop.train(cfg, tmp_path)
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['5']


def test_a_nonfinite_step_is_skipped_and_counted(tmp_path, monkeypatch):
  _poison_step(monkeypatch, bad_step=7)
  cfg = tiny_config(steps=20, log_every=5)
  cfg.train.on_nonfinite = 'skip'
  summary = loop.train(cfg, tmp_path)
  assert summary['skipped'] == 1 and np.isfinite(summary['loss'])
  rows = [r for r in read_rows(tmp_path) if 'loss' in r]
  assert [r['skipped'] for r in rows] == [0, 1, 1, 1]
  # The dropped update left the schedule behind by one step: the logged lr is the one applied.
  schedule = optim.schedule(cfg.optimizer, cfg.train.steps)
  applied = [float(schedule(r['step'] - 1 - r['skipped'])) for r in rows]
  np.testing.assert_allclose([r['lr'] for r in rows], applied, rtol=1e-6)
  assert rows[1]['lr'] != pytest.approx(float(schedule(rows[1]['step'] - 1)))


def test_a_skipped_update_leaves_params_and_optimizer_untouched():
  cfg = tiny_config(batch_size=8)
  model_cfg = model_configs.from_section(cfg.model, 80)
  mesh = sharding.make_mesh(cfg.mesh)
  steps = trainer_lib.build_steps(cfg, model_cfg, mesh)
  good = random_batch(8, num_tokens=1000)
  bad = dict(good, targets=np.full_like(good['targets'], 10_000))
  put = lambda b: jax.device_put(b, trainer_lib.batch_sharding(mesh))
  state, _ = steps.train(steps.init(), put(good))
  before = jax.device_get(state)
  state, metrics = steps.train(state, put(bad))
  assert not np.isfinite(float(metrics['loss']))
  after = jax.device_get(state)
  for a, b in zip(jax.tree.leaves((after.params, after.opt_state)),
                  jax.tree.leaves((before.params, before.opt_state)), strict=True):  # fmt: skip
    np.testing.assert_array_equal(a, b)
  assert int(after.skipped) == 1 and list(after.first_bad) == [2, 1] and int(after.step) == 2


@pytest.mark.slow
def test_performance_levers_train_exactly_like_the_plain_model_and_profile_steps(tmp_path):
  plain = tiny_config(steps=6, log_every=2)
  plain.mesh.update(data=4, fsdp=2)  # stacked layers shard like the rest (FSDP over 'embed')
  levers = tiny_config(steps=6, log_every=2)
  levers.mesh.update(data=4, fsdp=2)
  levers.model.update(scan_layers=True, remat='dots_saveable')
  levers.train.loss_chunk = 16
  levers.profile.update(steps=2, skip=1)
  loop.train(plain, tmp_path / 'plain')
  loop.train(levers, tmp_path / 'levers')
  expected, got = read_rows(tmp_path / 'plain'), read_rows(tmp_path / 'levers')
  for key in ('loss', 'grad_norm', 'eval_loss'):
    np.testing.assert_allclose(
      [r[key] for r in got if key in r], [r[key] for r in expected if key in r], rtol=2e-5
    )
  assert list((tmp_path / 'levers' / 'profile').rglob('*.xplane.pb'))


def test_throughput_counts_train_time_for_exactly_the_steps_it_covers(tmp_path, monkeypatch):
  """Evaluations and saves off the log grid: every interval's step_time is its train steps'
  time alone. A fake clock ticks 1 s per train step, 50 s per evaluation, 30 s per save."""
  now = [0.0]
  monkeypatch.setattr(hooks, 'clock', lambda: now[0])

  def ticking(method, seconds):
    def run(*args, **kwargs):
      now[0] += seconds
      return method(*args, **kwargs)

    return run

  real_compile = trainer_lib.Trainer.compile

  def compile(self):
    compiled = real_compile(self)
    self.train_step = ticking(self.train_step, 1.0)
    return compiled

  monkeypatch.setattr(trainer_lib.Trainer, 'compile', compile)
  monkeypatch.setattr(trainer_lib.Trainer, 'evaluate', ticking(trainer_lib.Trainer.evaluate, 50.0))
  monkeypatch.setattr(checkpoint.Checkpointer, 'save', ticking(checkpoint.Checkpointer.save, 30.0))
  cfg = tiny_config(steps=40, log_every=20)
  cfg.eval.every_steps = 15
  cfg.ckpt.every_steps = 7
  loop.train(cfg, tmp_path)
  rows = [r for r in read_rows(tmp_path) if 'step_time' in r]
  assert [r['step'] for r in rows] == [20, 40]
  assert [r['step_time'] for r in rows] == [1.0, 1.0]
  assert [r['tokens_per_sec'] for r in rows] == [16 * 64, 16 * 64]
  assert compare.summary(compare.load_workdir(tmp_path))['wall'] == 40.0


def test_every_process_reads_the_runs_saved_tokenizer(tmp_path, monkeypatch):
  """Process 1 of a resumed run takes the tokenizer process 0 saved, not one rebuilt from a
  corpus that has changed since (other ids on each host), and writes nothing."""
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text('to be or not to be\n\n' * 40)
  cfg = tiny_config(steps=2, log_every=1)
  cfg.data.update(source=f'text:{corpus}', val_fraction=0.5)
  run = tmp_path / 'run'
  loop.train(cfg, run)
  saved = (run / 'tokenizer.json').read_text()
  corpus.write_text('now is the winter of our discontent\n\n' * 40)  # other characters
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  trainer = trainer_lib.Trainer(cfg, run)
  assert trainer.task.tokenizer.spec() == json.loads(saved)
  assert (run / 'tokenizer.json').read_text() == saved
