"""`llm-jax bench`: tokens/s and MFU of a config's real train step on synthetic tokens.

The framework step is the one `llm-jax train` runs (same state, shardings, optimizer). On CPU
the benchmark also times a reference: the same GPT and optimizer written as plain JAX functions
over a dict of arrays, jitted with donation. Their ratio is the framework's overhead. Both are
timed in this process, alternately, one step at a time after warm-up; we report medians.
"""

import math
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from llm_jax import config as config_lib
from llm_jax import perf, sharding
from llm_jax.models.gpt import attention_implementation
from llm_jax.train import loop, optim, tasks


def reference_params(model_cfg, key):
  """GPT-2 parameters as a plain dict (same shapes and init as llm_jax.models.gpt)."""
  d, n, L, V = model_cfg.n_embd, model_cfg.n_head, model_cfg.n_layer, model_cfg.vocab_size
  h, m, proj_std = d // n, model_cfg.mlp_ratio * d, 0.02 / math.sqrt(2 * L)
  keys = iter(jax.random.split(key, 2 + 4 * L))
  normal = lambda shape, std=0.02: std * jax.random.normal(next(keys), shape)
  norm = lambda: dict(scale=jnp.ones(d), bias=jnp.zeros(d))
  linear = lambda shape, bias, std=0.02: dict(kernel=normal(shape, std), bias=jnp.zeros(bias))
  layer = lambda: dict(
    ln1=norm(),
    ln2=norm(),
    qkv=linear((d, 3, n, h), (3, n, h)),
    proj=linear((n, h, d), d, proj_std),
    fc=linear((d, m), m),
    out=linear((m, d), d, proj_std),
  )
  return dict(
    wte=normal((V, d)),
    wpe=normal((model_cfg.block_size, d)),
    blocks=[layer() for _ in range(L)],
    ln_f=norm(),
  )


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p['scale'] + p['bias']


def reference_loss(params, inputs, targets, dtype):
  """Plain-JAX GPT forward and mean cross-entropy."""
  c = lambda a: a.astype(dtype)
  x = c(params['wte'])[inputs] + c(params['wpe'])[: inputs.shape[1]]
  for p in params['blocks']:
    qkv = p['qkv']
    qkv = jnp.einsum('btd,dsnh->btsnh', c(_layer_norm(x, p['ln1'])), c(qkv['kernel'])) + c(
      qkv['bias']
    )
    y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], is_causal=True)
    x = x + jnp.einsum('btnh,nhd->btd', y, c(p['proj']['kernel'])) + c(p['proj']['bias'])
    fc, out = p['fc'], p['out']
    hid = c(_layer_norm(x, p['ln2'])) @ c(fc['kernel']) + c(fc['bias'])
    x = x + jax.nn.gelu(hid, approximate=True) @ c(out['kernel']) + c(out['bias'])
  logits = (c(_layer_norm(x, params['ln_f'])) @ c(params['wte']).T).astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def reference_step(cfg, model_cfg):
  """(params, opt_state, step) for the plain-JAX reference; step donates params and opt_state."""
  tx = optim.make(cfg.optimizer, cfg.train.steps)
  params = reference_params(model_cfg, jax.random.key(cfg.train.seed))
  dtype = jnp.dtype(model_cfg.dtype)

  def step(params, opt_state, inputs, targets):
    loss, grads = jax.value_and_grad(reference_loss)(params, inputs, targets, dtype)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return params, tx.init(params), jax.jit(step, donate_argnums=(0, 1))


def _reference_mismatch(cfg, model_cfg) -> str | None:
  """Why the plain-JAX reference cannot stand in for this config, or None if it can."""
  if cfg.model.name != 'gpt' or cfg.data.segment_ids:
    return 'the reference is a GPT language model without segment ids'
  if model_cfg.position != 'learned' or not model_cfg.bias or model_cfg.dropout:
    return 'the reference is GPT-2 style only: learned positions, biases, no dropout'
  if cfg.train.grad_accum_steps != 1:
    return 'the reference does not accumulate gradients'
  if jax.device_count() != 1:
    return 'the reference runs on one device'
  return None


def _task(cfg) -> tasks.Task:
  """The objective, model and data that `train` would use: pretraining only."""
  if config_lib.task_name(cfg) == 'classify':
    raise config_lib.ConfigError('bench times pretraining steps (lm, mlm), not train.task=classify')
  return tasks.make(cfg, None)


def _peak_memory_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def _timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def _framework_timer(compiled, state, batch):
  """A zero-argument function that runs one framework train step and returns its loss."""
  live = {'state': state}

  def step():
    live['state'], metrics = compiled(live['state'], batch)
    return metrics['loss']

  return step


def _reference_timer(cfg, model_cfg, inputs, targets):
  """A zero-argument function that runs one reference train step and returns its loss."""
  params, opt_state, ref_step = reference_step(cfg, model_cfg)
  live = {'params': params, 'opt_state': opt_state}

  def step():
    live['params'], live['opt_state'], loss = ref_step(**live, inputs=inputs, targets=targets)
    return loss

  return step


def _median_times(timers: dict, *, steps: int, warmup: int) -> dict:
  """Median seconds per call of each timer, calls alternated so noise lands on all alike."""
  for fn in timers.values():
    for _ in range(warmup):
      _timed(fn)
  times = {name: [] for name in timers}
  for _ in range(steps):
    for name, fn in timers.items():
      times[name].append(_timed(fn))
  return {name: statistics.median(ts) for name, ts in times.items()}


def run(cfg, *, steps: int = 20, warmup: int = 3, reference: bool | None = None) -> dict:
  """Benchmark `cfg`'s train step; `reference` defaults to on for CPU when the model matches."""
  config_lib.validate(cfg, jax.device_count(), jax.default_backend())
  task = _task(cfg)
  model_cfg = task.model_cfg
  mismatch = _reference_mismatch(cfg, model_cfg)
  if reference is None:
    reference = jax.default_backend() == 'cpu' and mismatch is None
  if reference and mismatch:
    raise config_lib.ConfigError(f'--reference: {mismatch}')
  mesh = sharding.make_mesh(cfg.mesh)
  built = loop.build_steps(cfg, model_cfg, mesh, task.loss, task.evaluate)
  state, train_step = built.init(), built.train
  b, t = cfg.train.batch_size, cfg.data.seq_len
  # One batch, read before timing and reused: the data path is not what is measured.
  batch = loop.put_batch(task.train_batches(0, slice(None)), mesh, cfg.mesh.rules)

  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  result = {'compile_s': time.perf_counter() - start}
  timers = {'framework': _framework_timer(compiled, state, batch)}
  if reference:
    timers['reference'] = _reference_timer(cfg, model_cfg, **batch)
  times = _median_times(timers, steps=steps, warmup=warmup)

  step_s = times['framework']
  tps = b * t / step_s
  result.update(
    config=dict(
      n_layer=model_cfg.n_layer,
      n_embd=model_cfg.n_embd,
      batch_size=b,
      seq_len=t,
      dtype=model_cfg.dtype,
      vocab_size=model_cfg.vocab_size,
      attention=attention_implementation(
        model_cfg.attention, model_cfg.dtype, jax.default_backend()
      ),
      scan_layers=model_cfg.scan_layers,
      remat=model_cfg.remat,
      loss_chunk=cfg.train.loss_chunk,
    ),
    backend=jax.default_backend(),
    device_kind=jax.devices()[0].device_kind,
    num_devices=jax.device_count(),
    step_s=step_s,
    tokens_per_sec=tps,
    flops_per_token=perf.flops_per_token(model_cfg, t, task.scored),
    mfu=perf.mfu(tps, model_cfg, t, jax.device_count(), task.scored),
    peak_memory_bytes=_peak_memory_bytes(),
  )
  if reference:
    result['reference_step_s'] = times['reference']
    result['ratio'] = step_s / result['reference_step_s']
  else:
    result['reference_skipped'] = mismatch or 'not requested'
  return result


def format_table(result: dict) -> str:
  """A human-readable summary of `run`'s result."""
  mfu = (
    'unknown (no peak FLOP/s for this device)' if result['mfu'] is None else f'{result["mfu"]:.1%}'
  )
  mem = result['peak_memory_bytes']
  rows = [
    ('device', f'{result["num_devices"]} × {result["device_kind"]} ({result["backend"]})'),
    ('model', ', '.join(f'{k}={v}' for k, v in result['config'].items())),
    ('compile', f'{result["compile_s"]:.2f} s'),
    ('step time (median)', f'{result["step_s"] * 1e3:.2f} ms'),
    ('tokens/s', f'{result["tokens_per_sec"]:,.0f}'),
    ('MFU', mfu),
    ('peak memory', 'n/a' if mem is None else f'{mem / 2**30:.2f} GiB'),
  ]
  if 'ratio' in result:
    rows += [
      ('plain-JAX reference step', f'{result["reference_step_s"] * 1e3:.2f} ms'),
      ('framework / reference', f'{result["ratio"]:.3f}×'),
    ]
  else:
    rows.append(('plain-JAX reference', f'skipped: {result["reference_skipped"]}'))
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)
