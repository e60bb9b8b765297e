import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llm_jax import perf
from llm_jax.models import registry
from llm_jax.models.configs import BERTConfig, GPTConfig
from llm_jax.models.layers import attention_implementation
from llm_jax.train import losses

LOGICAL_AXES = {'vocab', 'embed', 'heads', 'kv', 'mlp', 'layers', None}


def small(**kw):
  return GPTConfig(**dict(dict(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32), **kw))


def tokens(b=2, t=16, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, 50)


@pytest.mark.parametrize('position', ['learned', 'rope'])
def test_logits_shape_and_causality(position):
  model = registry.build(small(position=position), seed=0)
  x = tokens()
  logits = model(x)
  assert logits.shape == (2, 16, 50) and logits.dtype == jnp.float32
  changed = x.at[:, 10].set((x[:, 10] + 1) % 50)  # change a future token
  after = model(changed)
  np.testing.assert_array_equal(logits[:, :10], after[:, :10])
  assert not np.allclose(logits[:, 10:], after[:, 10:])


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32():
  cfg32, cfg16 = small(), small(dtype='bfloat16')
  m32, m16 = registry.build(cfg32, seed=0), registry.build(cfg16, seed=0)
  params = nnx.state(m16, nnx.Param)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  np.testing.assert_allclose(m16(tokens()), m32(tokens()), atol=0.05)


@pytest.mark.parametrize('family', ['gpt', 'bert'])
def test_bf16_models_project_onto_the_vocabulary_in_fp32(family):
  """The output projection accumulates and returns fp32 (as MaxText's): rounding its logits
  to bf16 would put every one of them on bf16's 8-bit-mantissa grid."""
  cfg = small(dtype='bfloat16')
  if family == 'bert':
    shared = {f.name for f in dataclasses.fields(BERTConfig)}
    cfg = BERTConfig(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in shared})
  model = registry.build(cfg, seed=0)
  logits = model(tokens())
  assert logits.dtype == jnp.float32
  on_bf16_grid = logits.astype(jnp.bfloat16).astype(jnp.float32) == logits
  assert float(on_bf16_grid.mean()) < 0.05


def test_every_parameter_names_known_logical_axes():
  model = registry.build(small(), seed=0)
  params = nnx.state(model, nnx.Param)
  specs = nnx.get_partition_spec(params)
  for (path, spec), leaf in zip(
    jax.tree.leaves_with_path(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)),
    jax.tree.leaves(params),
    strict=True,
  ):
    assert len(spec) == leaf.ndim, path
    assert set(spec) <= LOGICAL_AXES, path
  flat = nnx.to_flat_state(params)
  by_name = {'/'.join(map(str, k)): v for k, v in flat}
  assert tuple(by_name['wte/embedding'].get_metadata()['out_sharding']) == ('vocab', 'embed')
  assert tuple(by_name['blocks/0/mlp/fc/kernel'].get_metadata()['out_sharding']) == ('embed', 'mlp')
  assert tuple(by_name['blocks/0/attn/qkv/kernel'].get_metadata()['out_sharding']) == (
    'embed',
    None,
    'heads',
    'kv',
  )


def test_gpt2_initialisation_and_parameter_count():
  cfg = small(n_layer=8, n_embd=64, vocab_size=1000, block_size=64)
  params = nnx.state(registry.build(cfg, seed=0), nnx.Param)
  flat = {'/'.join(map(str, k)): v[...] for k, v in nnx.to_flat_state(params)}
  assert abs(flat['wte/embedding'].std() - 0.02) < 0.002
  assert abs(flat['blocks/0/mlp/proj/kernel'].std() - 0.02 / np.sqrt(16)) < 0.001
  assert np.all(flat['blocks/0/mlp/fc/bias'] == 0) and np.all(flat['ln_f/scale'] == 1)
  # Weights counted by the FLOPs formula + position table + biases and norms = every parameter.
  d, L = cfg.n_embd, cfg.n_layer
  small_params = L * (3 * d + d + 4 * d + d + 4 * d) + d * 2
  total = sum(x.size for x in flat.values())
  assert total == perf.matmul_params(cfg) + cfg.block_size * d + small_params


def test_dropout_only_with_rngs():
  model = registry.build(small(dropout=0.5), seed=0)
  x = tokens()
  np.testing.assert_array_equal(model(x), model(x))
  a, b = model(x, rngs=nnx.Rngs(dropout=1)), model(x, rngs=nnx.Rngs(dropout=2))
  assert not np.allclose(a, b)


def test_attention_implementation_falls_back_off_gpu():
  assert attention_implementation('auto', 'bfloat16', 'cpu') == 'xla'
  assert attention_implementation('auto', 'bfloat16', 'gpu') == 'cudnn'
  assert attention_implementation('auto', 'float32', 'gpu') == 'xla'
  assert attention_implementation('xla', 'bfloat16', 'gpu') == 'xla'
  assert attention_implementation('auto', 'bfloat16', 'tpu') == 'xla'
  assert attention_implementation('splash', 'bfloat16', 'tpu') == 'splash'


def attention_case(name: str, **kw):
  """A 2-layer model (graphdef, params) and its inputs (tokens, extra keyword arguments) for 2
  rows of 128: causal with packed documents for GPT, bidirectional with a padded row for BERT."""
  family = BERTConfig if name == 'bert' else GPTConfig
  base = dict(vocab_size=50, block_size=128, n_layer=2, n_head=2, n_embd=32, position='rope')
  graphdef, params = nnx.split(registry.build(family(**base, **kw), seed=0), nnx.Param)
  if name == 'gpt':
    extra = dict(segment_ids=jnp.array([[0] * 50 + [1] * 78, [0] * 128]))
  else:
    extra = dict(lengths=jnp.array([128, 90]))
  return graphdef, params, tokens(2, 128), extra


def attention_outputs(name: str, **kw):
  """The case's logits and the gradients of their weighted sum."""
  graphdef, params, x, extra = attention_case(name, **kw)
  weights = jax.random.normal(jax.random.key(3), (2, 128, 50))
  logits = lambda params: nnx.merge(graphdef, params)(x, **extra)
  grads = jax.jit(jax.grad(lambda params: jnp.sum(logits(params) * weights)))(params)
  return [jax.jit(logits)(params), *jax.tree.leaves(grads)]


def assert_close(actual, expected, rel: float):
  """Each array within `rel` of the expected one in relative L2 norm (bf16 vs fp32 here: 0.024)."""
  for a, b in zip(actual, expected, strict=True):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.linalg.norm(a - b) <= rel * np.linalg.norm(b), (np.linalg.norm(a - b), rel)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a GPU')
@pytest.mark.parametrize('name', ['gpt', 'bert'])
def test_cudnn_attention_gives_xlas_loss_and_gradients_on_gpu(name):
  xla = attention_outputs(name, dtype='bfloat16', attention='xla')
  assert_close(attention_outputs(name, dtype='bfloat16', attention='cudnn'), xla, rel=0.05)


@pytest.mark.parametrize('name', ['gpt', 'bert'])
def test_splash_attention_gives_xlas_loss_and_gradients(name):
  """The Pallas TPU kernel, here in interpret mode."""
  xla = attention_outputs(name)
  assert_close(attention_outputs(name, attention='splash'), xla, rel=1e-5)


def test_splash_falls_back_to_xla_at_lengths_it_cannot_tile():
  x = tokens(2, 40)
  splash = registry.build(small(block_size=128, attention='splash'), seed=0)(x)
  np.testing.assert_array_equal(splash, registry.build(small(block_size=128), seed=0)(x))


@pytest.mark.parametrize('position', ['learned', 'rope'])
def test_segment_ids_keep_each_document_to_itself(position):
  model = registry.build(small(position=position), seed=0)
  a, b = tokens(1, 6, seed=1), tokens(1, 10, seed=2)
  packed = jnp.concatenate([a, b], axis=1)  # two documents in one (1, 16) row
  segment_ids = jnp.array([[0] * 6 + [1] * 10])
  positions = jnp.array([list(range(6)) + list(range(10))])
  out = model(packed, segment_ids=segment_ids, positions=positions)
  np.testing.assert_allclose(out[:, :6], model(a), atol=1e-5)
  np.testing.assert_allclose(out[:, 6:], model(b), atol=1e-5)
  assert not np.allclose(model(packed)[:, 6:], model(b), atol=1e-3)  # unmasked, b sees a


def stacked(pure: dict) -> dict:
  """Per-layer parameters (blocks/0, blocks/1, ...) in scan_layers' layout: one leading axis."""
  if 'blocks' not in pure:
    return {k: stacked(v) if isinstance(v, dict) else v for k, v in pure.items()}
  layers = (v for _, v in sorted(pure['blocks'].items()))
  return {**pure, 'blocks': jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def loss_and_grads(cfg, pure_params, x):
  """Cross-entropy with dropout on (fixed keys), and its gradients, as pure dicts."""
  graphdef, params = nnx.split(registry.build(cfg, seed=1), nnx.Param)
  nnx.replace_by_pure_dict(params, pure_params)

  def loss(params):
    logits = nnx.merge(graphdef, params)(x[:, :-1], rngs=nnx.Rngs(dropout=7))
    return losses.cross_entropy(logits, x[:, 1:])

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  return value, nnx.to_pure_dict(grads)


@pytest.mark.parametrize(
  'name, remat', [('gpt', 'none'), ('gpt', 'dots_saveable'), ('gpt', 'full'), ('bert', 'full')]
)
def test_scanned_and_rematerialised_blocks_compute_the_loops_loss_and_gradients(name, remat):
  family = BERTConfig if name == 'bert' else GPTConfig
  cfg = family(vocab_size=50, block_size=32, n_layer=3, n_head=4, n_embd=32, dropout=0.1)
  loop_params = nnx.to_pure_dict(nnx.state(registry.build(cfg, seed=0), nnx.Param))
  x = tokens(t=17)
  ref_loss, ref_grads = loss_and_grads(cfg, loop_params, x)
  scan_cfg = dataclasses.replace(cfg, scan_layers=True, remat=remat)
  loss, grads = loss_and_grads(scan_cfg, stacked(loop_params), x)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(stacked(ref_grads)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scanned_blocks_stack_the_loops_initial_values_on_a_leading_layers_axis():
  model = registry.build(small(scan_layers=True, n_layer=3), seed=0)
  pure = lambda m: nnx.to_pure_dict(nnx.state(m, nnx.Param))
  expected = stacked(pure(registry.build(small(n_layer=3), seed=0)))
  jax.tree.map(np.testing.assert_array_equal, pure(model), expected)
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  fc = flat[('blocks', 'mlp', 'fc', 'kernel')]
  assert fc.shape == (3, 32, 128)
  assert tuple(fc.get_metadata()['out_sharding']) == ('layers', 'embed', 'mlp')
  assert tuple(flat[('blocks', 'ln_1', 'scale')].get_metadata()['out_sharding']) == (
    'layers',
    'embed',
  )
