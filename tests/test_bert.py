import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llm_jax import config
from llm_jax.models import configs as model_configs
from llm_jax.models import registry
from llm_jax.models.configs import BERTConfig, ClassifierConfig, GPTConfig
from tests.test_gpt import LOGICAL_AXES


def small(**kw):
  base = dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
  return BERTConfig(**dict(base, **kw))


def padded(x, extra: int):
  return jnp.concatenate([x, jnp.full((x.shape[0], extra), 7, x.dtype)], axis=1)


@pytest.mark.parametrize('norm', ['post', 'pre'])
def test_padding_leaves_real_positions_unchanged(norm):
  model = registry.build(small(norm=norm), seed=0)
  x = jax.random.randint(jax.random.key(0), (2, 10), 0, 64)
  lengths = jnp.array([10, 6])
  out = model(padded(x, 5), lengths=lengths)
  np.testing.assert_allclose(out[0, :10], model(x[:1])[0], atol=1e-5)
  np.testing.assert_allclose(out[1, :6], model(x[1:, :6])[0], atol=1e-5)
  assert out.shape == (2, 15, 64) and out.dtype == jnp.float32


def test_attention_sees_both_directions():
  model = registry.build(small(), seed=0)
  x = jax.random.randint(jax.random.key(1), (1, 12), 0, 64)
  changed = x.at[:, 11].set((x[:, 11] + 1) % 64)
  assert not np.allclose(model(x)[:, 0], model(changed)[:, 0])  # the last token reaches the first


def test_parameters_name_gpts_logical_axes():
  params = nnx.state(registry.build(small(), seed=0), nnx.Param)
  specs = jax.tree.leaves(
    nnx.get_partition_spec(params), is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)
  )
  for spec, leaf in zip(specs, jax.tree.leaves(params), strict=True):
    assert len(spec) == leaf.ndim and set(spec) <= LOGICAL_AXES


@pytest.mark.parametrize('preset, published', [('bert_base', 110e6), ('bert_large', 340e6)])
def test_presets_have_the_published_sizes(preset, published):
  cfg = config.preset(preset)
  model_cfg = model_configs.from_section(cfg.model, 0)
  model_cfg = BERTConfig(**{**model_cfg.__dict__, 'vocab_size': 30522})  # BERT's WordPiece vocab
  abstract = nnx.eval_shape(lambda: registry.build(model_cfg, seed=0))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert abs(count - published) / published < 0.02, count


def test_classifiers_pool_cls_for_encoders_and_the_last_token_for_decoders():
  x = jax.random.randint(jax.random.key(2), (2, 10), 0, 64)
  lengths = jnp.array([10, 4])
  for backbone in (
    small(),
    GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32),
  ):
    model = registry.build(ClassifierConfig(backbone, num_classes=3), seed=0)
    logits = model(padded(x, 3), lengths)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    alone = model(x[1:, :4], jnp.array([4]))  # padding after the length changes nothing
    np.testing.assert_allclose(logits[1], alone[0], atol=1e-5)
