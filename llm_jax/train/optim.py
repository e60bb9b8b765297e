"""AdamW with warmup + cosine decay, global-norm clipping and a weight-decay mask."""

import jax
import optax


def schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine decay to `lr * min_lr_ratio` at `total_steps`."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=opt_cfg.lr,
    warmup_steps=opt_cfg.warmup_steps,
    decay_steps=max(total_steps, opt_cfg.warmup_steps + 1),
    end_value=opt_cfg.lr * opt_cfg.min_lr_ratio,
  )


def decay_mask(params):
  """Decay matrices and embeddings only; biases and LayerNorm parameters (ndim < 2) are exempt."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


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
