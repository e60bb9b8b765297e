"""The framework's train step against the same GPT written in plain JAX, in one process.

    python benchmarks/reference_gpt.py --config configs/gpt_shakespeare.py:cpu [--steps 20]
        [--warmup 3] [--json out.json] [--config.KEY=VALUE ...]

The reference is GPT-2 (learned positions, biases, tied embeddings) as plain functions over a
dict of arrays: the same shapes, initialisation and compute dtype as `llm_jax.models.gpt`, mean
cross-entropy, and the framework's own optimizer (`llm_jax.train.optim`), in one `jax.jit` that
donates parameters and optimizer state. The framework step is the one `llm-jax bench` builds
(`llm_jax.bench.framework_step`). Both run on the same batch, alternately, one step at a time after
warm-up; we report their medians and framework / reference, the framework's overhead (below 1:
faster than the plain version). tests/test_bench.py checks that the reference computes the same
loss and gradients as the model.
"""

import argparse
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import optax

from llm_jax import bench
from llm_jax import config as config_lib
from llm_jax.train import optim


def init_params(model_cfg, key) -> dict:
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


def loss_fn(params, inputs, targets, dtype):
  """Plain-JAX GPT forward and mean cross-entropy; `dtype` is the compute dtype."""
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


def train_step(cfg, model_cfg):
  """(params, opt_state, step) for the reference; step donates params and opt_state."""
  tx = optim.make(cfg.optimizer, cfg.train.steps)
  params = init_params(model_cfg, jax.random.key(cfg.train.seed))
  dtype = jnp.dtype(model_cfg.dtype)

  def step(params, opt_state, inputs, targets):
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets, dtype)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return params, tx.init(params), jax.jit(step, donate_argnums=(0, 1))


def mismatch(cfg) -> str | None:
  """Why the reference cannot stand in for this config's model and step, or None if it can."""
  if cfg.model.name != 'gpt' or cfg.data.segment_ids:
    return 'the reference is a GPT language model without segment ids'
  if cfg.model.position != 'learned' or not cfg.model.bias or cfg.model.dropout:
    return 'the reference is GPT-2 style only: learned positions, biases, no dropout'
  if cfg.train.grad_accum_steps != 1:
    return 'the reference does not accumulate gradients'
  if jax.device_count() != 1:
    return 'the reference runs on one device'
  return None


def _timer(cfg, model_cfg, batch):
  """A zero-argument function that runs one reference train step and returns its loss."""
  params, opt_state, step = train_step(cfg, model_cfg)
  live = {'params': params, 'opt_state': opt_state}

  def run_step():
    live['params'], live['opt_state'], loss = step(**live, **batch)
    return loss

  return run_step


def compare(cfg, *, steps: int, warmup: int) -> dict:
  """Median framework and reference step times on `cfg`, and their ratio."""
  why = mismatch(cfg)
  if why:
    raise config_lib.ConfigError(f'no plain-JAX reference for this config: {why}')
  framework = bench.framework_step(cfg)
  timers = {
    'framework': bench.step_timer(framework),
    'reference': _timer(cfg, framework.task.model_cfg, framework.batch),
  }
  times = bench.median_times(timers, steps=steps, warmup=warmup)
  return dict(
    backend=jax.default_backend(),
    device_kind=jax.devices()[0].device_kind,
    num_devices=jax.device_count(),
    compile_s=framework.compile_s,
    step_s=times['framework'],
    reference_step_s=times['reference'],
    ratio=times['framework'] / times['reference'],
  )


def format_table(result: dict) -> str:
  """A human-readable summary of `compare`'s result."""
  rows = [
    ('device', f'{result["num_devices"]} × {result["device_kind"]} ({result["backend"]})'),
    ('framework step (median)', f'{result["step_s"] * 1e3:.2f} ms'),
    ('plain-JAX reference step', f'{result["reference_step_s"] * 1e3:.2f} ms'),
    ('framework / reference', f'{result["ratio"]:.3f}×'),
  ]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def main(argv=None) -> None:
  """Parse the command line, time both steps, print the table (and write --json)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True, help='FILE[:ARG], as for llm-jax bench')
  parser.add_argument('--steps', type=int, default=20, help='timed steps of each')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps of each first')
  parser.add_argument('--json', default='', help='also write the result as JSON to this file')
  args, overrides = parser.parse_known_args(argv)
  stray = [arg for arg in overrides if not arg.startswith('--config.')]
  if stray:
    parser.error(f'unrecognized arguments: {" ".join(stray)}')
  try:
    result = compare(config_lib.load(args.config, overrides), steps=args.steps, warmup=args.warmup)
  except config_lib.ConfigError as e:  # bad input: one line, no traceback
    parser.exit(2, f'{parser.prog}: error: {e}\n')
  print(format_table(result))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + '\n')


if __name__ == '__main__':
  main()
