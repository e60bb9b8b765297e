"""Autoregressive sampling by full recomputation over a sliding context window.

The whole decode loop is one jitted `fori_loop`: each new token runs the model over the last
`block_size` tokens. Simple and exact; KV-cache decoding is a later optimisation.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def _pick(logits, key, temperature: float, top_k: int, vocab_size: int):
  """One id below `vocab_size` from fp32 logits (V,): greedy at temperature 0, else top-k."""
  logits = jnp.where(jnp.arange(logits.shape[0]) < vocab_size, logits, -jnp.inf)  # padding ids
  if temperature == 0:
    return jnp.argmax(logits)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][-1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits)


@functools.partial(
  jax.jit, static_argnames=('graphdef', 'max_new_tokens', 'temperature', 'top_k', 'vocab_size')
)
def _generate(graphdef, params, prompt, key, *, max_new_tokens, temperature, top_k, vocab_size):
  model = nnx.merge(graphdef, params)
  n, total = prompt.shape[0], prompt.shape[0] + max_new_tokens
  window = min(model.cfg.block_size, total)
  tokens = jnp.zeros((total,), jnp.int32).at[:n].set(prompt)

  def body(t, tokens):  # predicts tokens[t] from everything before it
    start = jnp.clip(t - window, 0, total - window)
    context = jax.lax.dynamic_slice(tokens, (start,), (window,))
    logits = model(context[None])[0, t - 1 - start]
    token = _pick(logits, jax.random.fold_in(key, t), temperature, top_k, vocab_size)
    return tokens.at[t].set(token)

  return jax.lax.fori_loop(n, total, body, tokens)


def generate(
  graphdef,
  params,
  prompt_ids,
  *,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_k: int = 0,
  seed: int = 0,
  vocab_size: int | None = None,
) -> jax.Array:
  """Prompt followed by `max_new_tokens` sampled ids, as a 1-D int32 array.

  `vocab_size`: the tokenizer's size; ids at or above it (vocabulary padding) are never sampled.
  """
  if len(prompt_ids) == 0:
    raise ValueError('the prompt must hold at least one token')
  prompt = jnp.asarray(prompt_ids, jnp.int32)
  return _generate(
    graphdef,
    params,
    prompt,
    jax.random.key(seed),
    max_new_tokens=max_new_tokens,
    temperature=float(temperature),
    top_k=int(top_k),
    vocab_size=int(vocab_size or nnx.merge(graphdef, params).cfg.vocab_size),
  )
