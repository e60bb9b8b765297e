"""Autoregressive sampling for a batch of prompts of different lengths.

Within the context window: one jitted prefill over the left-padded prompts fills a KV cache
(`GPT.decode`), then a jitted `lax.while_loop` feeds one new token per row per iteration through
the cache: no Python per token. Left padding puts every row's next token in the same cache slot,
so each step writes the cache in place. Rows stop at EOS, and the loop stops once every row has.

Past the context window the cache cannot slide (positions are absolute), so each new token
recomputes the model over the row's last block_size tokens, also inside one jitted loop.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm_jax.errors import check
from llm_jax.models.layers import DTYPES, KVCache


def allowed_logits(logits, *, temperature: float, top_k: int, top_p: float, vocab_size: int):
  """fp32 logits (B, V) scaled by temperature, -inf outside the sampling set: ids below
  `vocab_size` (never vocabulary padding), the `top_k` most likely (0: all), and the fewest most
  likely whose probabilities sum to at least `top_p` (1: all)."""
  logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
  logits = logits / max(temperature, 1e-6)
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    kept = jnp.cumsum(probs, axis=-1) - probs < top_p  # mass before a token is under top_p
    cutoff = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def _pick(logits, key, sampling: dict):
  """One id per row of logits (B, V): greedy at temperature 0, else sampled."""
  if sampling['temperature'] == 0:
    return jnp.argmax(allowed_logits(logits, **sampling), axis=-1)
  return jax.random.categorical(key, allowed_logits(logits, **sampling))


def _loop(step, state, *, batch: int, max_new_tokens: int, eos_id: int):
  """Runs `step(t, state) -> (token (B,), state)` until max_new_tokens or every row hit EOS."""
  out = jnp.zeros((batch, max_new_tokens), jnp.int32)

  def cond(carry):
    t, _, done, _ = carry
    return (t < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    t, out, done, state = carry
    token, state = step(t, state)
    return t + 1, out.at[:, t].set(token), done | (token == eos_id), state

  init = (jnp.zeros((), jnp.int32), out, jnp.zeros((batch,), bool), state)
  return jax.lax.while_loop(cond, body, init)[1]


@functools.partial(jax.jit, static_argnames=('graphdef', 'max_new_tokens', 'eos_id', 'sampling'))
def _cached(graphdef, params, tokens, lengths, key, *, max_new_tokens, eos_id, sampling):
  """New tokens (B, max_new_tokens) after right-padded prompts (B, P) of `lengths` (B,)."""
  model = nnx.merge(graphdef, params)
  batch, width = tokens.shape
  starts = width - lengths
  rows = jnp.arange(width)[None, :] - starts[:, None]  # (B, P): where each slot reads from
  left_padded = jnp.take_along_axis(tokens, jnp.maximum(rows, 0), axis=1)
  cache = KVCache.empty(model.cfg, starts, width + max_new_tokens, DTYPES[model.cfg.dtype])
  logits, cache = model.decode(left_padded, cache)  # the prefill
  last = logits[:, -1]  # (B, V): every row's prompt ends in the last slot

  def step(t, state):
    last, cache = state
    token = _pick(last, jax.random.fold_in(key, t), dict(sampling))
    logits, cache = model.decode(token[:, None], cache)
    return token, (logits[:, 0], cache)

  return _loop(step, (last, cache), batch=batch, max_new_tokens=max_new_tokens, eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=('graphdef', 'max_new_tokens', 'eos_id', 'sampling'))
def _recomputed(graphdef, params, tokens, lengths, key, *, max_new_tokens, eos_id, sampling):
  """`_cached`, recomputing each new token from the row's last block_size tokens."""
  model = nnx.merge(graphdef, params)
  total = tokens.shape[1] + max_new_tokens
  window = min(model.cfg.block_size, total)
  tokens = jnp.pad(tokens, ((0, 0), (0, max_new_tokens)))
  rows = jnp.arange(tokens.shape[0])

  def step(t, tokens):
    at = lengths + t  # (B,): where each row's next token goes
    start = jnp.clip(at - window, 0, total - window)
    context = jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (window,)))(tokens, start)
    logits = model(context)[rows, at - 1 - start]  # (B, V)
    token = _pick(logits, jax.random.fold_in(key, t), dict(sampling))
    return token, tokens.at[rows, at].set(token)

  return _loop(step, tokens, batch=len(rows), max_new_tokens=max_new_tokens, eos_id=eos_id)


def generate(
  graphdef,
  params,
  prompts,
  *,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  seed: int = 0,
  vocab_size: int | None = None,
  eos_id: int | None = None,
  cache: bool = True,
) -> list[list[int]]:
  """The ids generated after each prompt (lists of ids, lengths may differ), up to
  `max_new_tokens` or to EOS (excluded). `vocab_size`: the tokenizer's; ids at or above it
  (vocabulary padding) are never sampled. `cache=False` forces full recomputation."""
  if not prompts or min(map(len, prompts)) == 0:
    raise ValueError('every prompt must hold at least one token')
  cfg = nnx.merge(graphdef, params).cfg
  width = max(map(len, prompts))
  tokens = np.zeros((len(prompts), width), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, : len(prompt)] = prompt
  lengths = np.array([len(p) for p in prompts], np.int32)
  sampling = (
    ('temperature', float(temperature)),
    ('top_k', int(top_k)),
    ('top_p', float(top_p)),
    ('vocab_size', int(vocab_size or cfg.vocab_size)),
  )
  fits = width + max_new_tokens <= cfg.block_size
  run = _cached if cache and fits else _recomputed
  eos = -1 if eos_id is None else int(eos_id)
  out = run(
    graphdef,
    params,
    jnp.asarray(tokens),
    jnp.asarray(lengths),
    jax.random.key(seed),
    max_new_tokens=max_new_tokens,
    eos_id=eos,
    sampling=sampling,
  )
  rows = np.asarray(out).tolist()
  return [row[: row.index(eos)] if eos in row else row for row in rows]


def validate_sampling(s, prefix: str, vocab_size: int | None = None) -> None:
  """Checks sampling settings (`sample.*` of a config, or `sample`'s flags with prefix '--');
  top_k against the tokenizer's `vocab_size` when it is known."""
  check(s.max_new_tokens >= 0, f'{prefix}max_new_tokens={s.max_new_tokens} must be >= 0')
  check(s.temperature >= 0, f'{prefix}temperature={s.temperature} must be >= 0 (0: greedy)')
  check(0 < s.top_p <= 1, f'{prefix}top_p={s.top_p} must be in (0, 1] (1: all ids)')
  check(s.top_k >= 0, f'{prefix}top_k={s.top_k} must be >= 0 (0: all ids)')
  check(
    vocab_size is None or s.top_k <= vocab_size,
    f'{prefix}top_k={s.top_k} is more than the {vocab_size} ids of the tokenizer',
  )
