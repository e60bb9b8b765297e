"""AdamW with warmup + cosine decay, global-norm clipping and a weight-decay mask."""

import jax
import optax

from llm_jax.errors import check


def schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `total_steps`.

  Warmup starts above zero, as nanoGPT's `lr * (it + 1) / (warmup + 1)`: a first update with a
  learning rate of 0 would be a wasted step.
  """
  return optax.warmup_cosine_decay_schedule(
    init_value=opt_cfg.lr / (opt_cfg.warmup_steps + 1),
    peak_value=opt_cfg.lr,
    warmup_steps=opt_cfg.warmup_steps,
    decay_steps=max(total_steps, opt_cfg.warmup_steps + 1),
    end_value=opt_cfg.lr * opt_cfg.min_lr_ratio,
  )


def _name(path) -> str:
  """A parameter's own name: the last string key of its tree path (NNX adds a trailing .value)."""
  keys = [getattr(k, 'key', getattr(k, 'name', None)) for k in path]
  return next(k for k in reversed(keys) if isinstance(k, str) and k != 'value')


def decay_mask(params):
  """Decay weights (kernels, embeddings) only. Biases and LayerNorm scales are exempt by name,
  not rank: the qkv bias is (3, heads, kv) and scanned layers stack every parameter."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: not _name(path).endswith(('bias', 'scale')), params
  )


def make(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  """The optimizer described by the `optimizer` config section."""
  adamw = optax.adamw(
    schedule(opt_cfg, total_steps),
    b1=opt_cfg.b1,
    b2=opt_cfg.b2,
    eps=opt_cfg.eps,
    weight_decay=opt_cfg.weight_decay,
    mask=decay_mask,
  )
  if opt_cfg.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt_cfg.clip_norm), adamw)
  return adamw


def validate(o) -> None:
  """Checks the `optimizer` section."""
  check(o.lr > 0, f'optimizer.lr={o.lr} must be positive')
  check(o.warmup_steps >= 0, f'optimizer.warmup_steps={o.warmup_steps} must be >= 0')
  check(0 <= o.min_lr_ratio <= 1, f'optimizer.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]')
  check(o.weight_decay >= 0, f'optimizer.weight_decay={o.weight_decay} must be >= 0')
  check(o.clip_norm >= 0, f'optimizer.clip_norm={o.clip_norm} must be >= 0 (0: off)')


def fit_warmup(cfg) -> str | None:
  """Shortens a warmup longer than the run to the run (a smoke run of a few steps of any
  config); returns the one line that says so, or None."""
  o, t = cfg.optimizer, cfg.train
  if t.steps <= 0 or o.warmup_steps <= t.steps:  # validation names a bad train.steps
    return None
  note = (
    f'optimizer.warmup_steps={o.warmup_steps} is longer than train.steps={t.steps}: warming up'
    f' over all {t.steps} steps'
  )
  o.warmup_steps = t.steps
  return note
