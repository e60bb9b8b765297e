"""The objectives' pure functions: cross-entropy (whole or chunked), accuracy, BERT's masking.

Each runs inside the jitted train or eval step; `train/tasks.py` puts them together per task.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llm_jax.models.layers import tied_logits


def cross_entropy(logits, labels, weights=None):
  """Mean cross-entropy in nats over the positions where `weights` (default: all) are nonzero."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is None:
    return losses.mean()
  return (losses * weights).sum() / jnp.maximum(weights.sum(), 1)


def accuracy(logits, labels, weights):
  hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return (hits * weights).sum() / jnp.maximum(weights.sum(), 1)


def replacement_ids(vocab: int, never) -> np.ndarray:
  """The ids below `vocab` that MLM's random replacement may draw: all but those in `never`."""
  return np.setdiff1d(np.arange(vocab), np.asarray(never)).astype(np.int32)


def mask_tokens(key, tokens, *, rate: float, mask_id: int, replacements, never):
  """BERT's corruption: (inputs, chosen). Each token outside `never` is chosen with probability
  `rate`; a chosen token becomes `mask_id` (80%), an id drawn from `replacements` (10%), or
  stays (10%)."""
  choose_key, how_key, random_key = jax.random.split(key, 3)
  allowed = ~jnp.isin(tokens, jnp.asarray(never))
  chosen = allowed & (jax.random.uniform(choose_key, tokens.shape) < rate)
  how = jax.random.uniform(how_key, tokens.shape)
  replacements = jnp.asarray(replacements)
  random_ids = replacements[jax.random.randint(random_key, tokens.shape, 0, len(replacements))]
  corrupted = jnp.where(how < 0.8, mask_id, jnp.where(how < 0.9, random_ids, tokens))
  return jnp.where(chosen, corrupted, tokens), chosen


def chunked_cross_entropy(model, hidden, targets, chunk: int):
  """Mean cross-entropy of GPT's tied output projection on hidden states (B, T, C), `chunk`
  positions at a time. Each chunk's logits are recomputed in the backward pass, so neither pass
  holds more than (B, chunk, V) fp32 logits, where the plain loss holds (B, T, V)."""
  b, t, c = hidden.shape
  split = lambda x: x.reshape(b, t // chunk, chunk, *x.shape[2:]).swapaxes(0, 1)

  @jax.checkpoint
  def chunk_loss(h, y):  # h (B, chunk, C)
    logits = tied_logits(model.wte, h)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

  add = lambda total, xy: (total + chunk_loss(*xy), None)
  total, _ = jax.lax.scan(add, jnp.zeros((), jnp.float32), (split(hidden), split(targets)))
  return total / targets.size


def lm_loss(model, batch, key, rngs, *, chunk: int = 0):
  """(next-token cross-entropy, ({}, targets scored)); `segment_ids` and `positions` in the batch
  when packed.

  `chunk` > 0: the loss goes `chunk` positions at a time (`chunked_cross_entropy`).
  """
  del key
  inputs = dict(segment_ids=batch.get('segment_ids'), positions=batch.get('positions'), rngs=rngs)
  weight = jnp.float32(batch['targets'].size)
  if chunk:
    hidden = model.hidden(batch['inputs'], **inputs)
    return chunked_cross_entropy(model, hidden, batch['targets'], chunk), ({}, weight)
  return cross_entropy(model(batch['inputs'], **inputs), batch['targets']), ({}, weight)


def lm_eval(model, batch, *, chunk: int = 0):
  loss, (_, weight) = lm_loss(model, batch, None, None, chunk=chunk)
  return {'loss': loss}, weight


def mlm_predictions(seq_len: int, rate: float) -> int:
  """Positions scored per MLM row: the expected number chosen plus 4 standard deviations. A row
  with more (probability below 1e-4) leaves the excess out of its loss."""
  mean = rate * seq_len
  return min(seq_len, math.ceil(mean + 4 * math.sqrt(mean * (1 - rate))) + 1)
