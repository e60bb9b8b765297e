import jax
import numpy as np
from flax import nnx

from llm_jax import generate, models
from llm_jax.models.gpt import GPTConfig

CFG = GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)


def split():
  return nnx.split(models.build(CFG, seed=0), nnx.Param)


def test_greedy_equals_stepwise_argmax_with_a_sliding_window():
  graphdef, params = split()
  forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  prompt = np.array([1, 2, 3])
  out = np.asarray(generate.generate(graphdef, params, prompt, max_new_tokens=10, temperature=0))
  assert out.shape == (13,) and list(out[:3]) == [1, 2, 3]
  expected = list(prompt)
  for _ in range(10):  # crop to the last block_size tokens, as the model cannot see more
    context = np.array(expected[-CFG.block_size :])[None]
    expected.append(int(np.argmax(forward(params, context)[0, -1])))
  assert list(out) == expected


def test_top_k_one_is_greedy_and_sampling_depends_on_seed():
  graphdef, params = split()
  prompt = np.array([4])
  greedy = generate.generate(graphdef, params, prompt, max_new_tokens=12, temperature=0)
  top1 = generate.generate(graphdef, params, prompt, max_new_tokens=12, temperature=1.0, top_k=1)
  np.testing.assert_array_equal(greedy, top1)
  a = generate.generate(graphdef, params, prompt, max_new_tokens=12, temperature=2.0, seed=0)
  b = generate.generate(graphdef, params, prompt, max_new_tokens=12, temperature=2.0, seed=1)
  assert not np.array_equal(a, b)
  assert jax.numpy.all((a >= 0) & (a < CFG.vocab_size))


def test_padding_ids_are_never_sampled():
  graphdef, params = split()
  out = generate.generate(
    graphdef, params, np.array([1]), max_new_tokens=50, temperature=5.0, seed=3, vocab_size=7
  )
  assert int(out[1:].max()) < 7
