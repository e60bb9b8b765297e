import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llm_jax.inference import generate
from llm_jax.models import registry
from llm_jax.models.configs import GPTConfig

CFG = GPTConfig(vocab_size=20, block_size=24, n_layer=2, n_head=2, n_embd=16)
PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]


def split(cfg=CFG, seed=0):
  return nnx.split(registry.build(cfg, seed=seed), nnx.Param)


def greedy_by_recomputation(graphdef, params, prompt, n, block_size):
  """Greedy continuation with the plain forward pass over the last block_size tokens (padded on
  the right to one shape: a causal model's logits at a position ignore what follows it)."""
  forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  ids = list(prompt)
  for _ in range(n):
    context = ids[-block_size:]
    padded = np.array(context + [0] * (block_size - len(context)))[None]
    ids.append(int(np.argmax(forward(params, padded)[0, len(context) - 1])))
  return ids[len(prompt) :]


@pytest.mark.parametrize('variant', ['learned', 'rope', 'scan'])
def test_greedy_with_the_kv_cache_equals_full_recomputation(variant):
  cfg = dataclasses.replace(
    CFG, position='rope' if variant == 'rope' else 'learned', scan_layers=variant == 'scan'
  )
  graphdef, params = split(cfg)
  got = generate.generate(graphdef, params, PROMPTS, max_new_tokens=12, temperature=0)
  for prompt, ids in zip(PROMPTS, got, strict=True):
    assert ids == greedy_by_recomputation(graphdef, params, prompt, 12, cfg.block_size)


def test_past_the_context_window_each_token_sees_the_last_block_size_tokens():
  cfg = dataclasses.replace(CFG, block_size=8)
  graphdef, params = split(cfg)
  got = generate.generate(graphdef, params, PROMPTS, max_new_tokens=10, temperature=0)
  for prompt, ids in zip(PROMPTS, got, strict=True):
    assert ids == greedy_by_recomputation(graphdef, params, prompt, 10, 8)


def test_rows_stop_at_eos_and_the_rest_go_on():
  graphdef, params = split()
  free = generate.generate(graphdef, params, PROMPTS, max_new_tokens=12, temperature=0)
  eos = free[0][4]  # the fifth token the first row produces
  stopped = generate.generate(
    graphdef, params, PROMPTS, max_new_tokens=12, temperature=0, eos_id=eos
  )
  for ids, full in zip(stopped, free, strict=True):
    cut = full.index(eos) if eos in full else len(full)
    assert ids == full[:cut]
  assert len(stopped[0]) == free[0].index(eos) <= 4


def test_top_k_and_top_p_never_sample_outside_the_allowed_set():
  logits = jnp.log(jnp.array([[0.4, 0.3, 0.15, 0.1, 0.05, 0.0]]))  # id 5: padding below
  keys = jax.random.split(jax.random.key(0), 2000)
  draw = lambda **kw: set(
    np.asarray(
      jax.vmap(lambda k: jax.random.categorical(k, generate.allowed_logits(logits, **kw)))(keys)
    ).ravel()
  )
  base = dict(temperature=1.0, top_k=0, top_p=1.0, vocab_size=5)
  assert draw(**base) == {0, 1, 2, 3, 4}
  assert draw(**dict(base, top_k=2)) == {0, 1}
  assert draw(**dict(base, top_p=0.8)) == {0, 1, 2}  # 0.4 + 0.3 < 0.8 <= 0.4 + 0.3 + 0.15
  assert draw(**dict(base, top_p=0.8, top_k=1)) == {0}
  assert draw(**dict(base, vocab_size=3)) == {0, 1, 2}


def test_sampling_depends_on_the_seed_and_top_k_one_is_greedy():
  graphdef, params = split()
  sample = lambda **kw: generate.generate(graphdef, params, PROMPTS, max_new_tokens=12, **kw)
  assert sample(temperature=1.0, top_k=1) == sample(temperature=0)
  assert sample(temperature=2.0, seed=0) != sample(temperature=2.0, seed=1)
  assert max(max(ids) for ids in sample(temperature=5.0, vocab_size=7)) < 7
