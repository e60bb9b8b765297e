import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from llm_jax import config, sharding, validation
from llm_jax.models import configs as model_configs
from llm_jax.train import trainer as trainer_lib
from tests.conftest import tiny_config

STRATEGIES = {
  'data=8': dict(data=8),
  'fsdp=8': dict(data=1, fsdp=8),
  'tensor=2×data=4': dict(data=4, tensor=2),
  'fsdp=4×tensor=2': dict(data=1, fsdp=4, tensor=2),
  'data=2×fsdp=2×tensor=2': dict(data=2, fsdp=2, tensor=2),
}


def mesh_cfg(data=-1, fsdp=1, tensor=1, **dcn):
  return ml_collections.ConfigDict(
    dict(data=data, fsdp=fsdp, tensor=tensor, dcn_data=1, dcn_fsdp=1, dcn_tensor=1) | dcn
  )


def test_mesh_shape_resolves_minus_one():
  assert sharding.mesh_shape(mesh_cfg(), 8) == (8, 1, 1)
  assert sharding.mesh_shape(mesh_cfg(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)


@pytest.mark.parametrize(
  'cfg, message',
  [
    (mesh_cfg(data=3), 'mesh data×fsdp×tensor = 3 but there are 8 devices'),
    (mesh_cfg(data=-1, fsdp=-1), 'only one mesh axis may be -1'),
    (mesh_cfg(data=-1, tensor=3), 'mesh.data=-1'),
    (mesh_cfg(data=0), 'mesh.data=0'),
  ],
)
def test_bad_meshes_name_the_axis(cfg, message):
  with pytest.raises(ValueError, match=message):
    sharding.mesh_shape(cfg, 8)


def test_dcn_factors_must_divide_their_axis():
  assert sharding.dcn_shape(mesh_cfg(dcn_data=2), (8, 1, 1)) == (2, 1, 1)
  with pytest.raises(ValueError, match='mesh.dcn_fsdp=3 must be a positive divisor of mesh.fsdp=4'):
    sharding.dcn_shape(mesh_cfg(dcn_fsdp=3), (2, 4, 1))


def test_rules_map_logical_names_to_mesh_axes():
  assert sharding.logical_to_mesh(('embed', 'mlp')) == P('fsdp', 'tensor')
  assert sharding.logical_to_mesh(('batch', 'length')) == P(('data', 'fsdp'), None)
  assert sharding.logical_to_mesh((None, 'heads', 'kv')) == P(None, 'tensor', None)
  with pytest.raises(ValueError, match="'hidden' has no sharding rule"):
    sharding.logical_to_mesh(('hidden',))
  with pytest.raises(ValueError, match='onto one mesh axis twice'):
    sharding.logical_to_mesh(('embed', 'mlp'), (('embed', 'tensor'), ('mlp', 'tensor')))


@pytest.mark.parametrize(
  'rules, message',
  [
    ((('hidden', 'fsdp'),) + sharding.DEFAULT_RULES, "unknown logical axis 'hidden'"),
    (sharding.DEFAULT_RULES[:-1] + (('layers', 'pipeline'),), "unknown mesh axis 'pipeline'"),
    (sharding.DEFAULT_RULES[1:], "no rule for logical axis 'batch'"),
    (sharding.DEFAULT_RULES + (('kv', None),), "'kv' has two rules"),
  ],
)
def test_bad_rules_are_config_errors(rules, message):
  cfg = tiny_config()
  cfg.mesh.rules = rules
  with pytest.raises(config.ConfigError, match=message):
    validation.validate(cfg, num_devices=8, backend='cpu')


def _steps(mesh_axes, devices=None, **model):
  cfg = tiny_config()
  cfg.mesh.update(mesh_axes)
  cfg.model.update(model)
  model_cfg = model_configs.from_section(cfg.model, 64)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  return cfg, mesh, trainer_lib.build_steps(cfg, model_cfg, mesh)


@pytest.mark.parametrize('strategy', STRATEGIES)
def test_every_parameter_and_moment_is_sharded_as_the_rules_say(strategy):
  cfg, mesh, steps = _steps(STRATEGIES[strategy])
  state = steps.init()
  logical = nnx.get_partition_spec(steps.abstract.params)
  is_spec = lambda x: isinstance(x, P)
  expected = [
    sharding.logical_to_mesh(tuple(s), cfg.mesh.rules)
    for s in jax.tree.leaves(logical, is_leaf=is_spec)
  ]
  assert [p.sharding.spec for p in jax.tree.leaves(state.params)] == expected
  adam = state.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
  assert [m.sharding.spec for m in jax.tree.leaves(adam.mu)] == expected
  assert [m.sharding.spec for m in jax.tree.leaves(adam.nu)] == expected
  assert adam.count.sharding.spec == P()


def test_fsdp_holds_an_eighth_of_the_parameters_per_device():
  _, _, steps = _steps(STRATEGIES['fsdp=8'])
  state = steps.init()
  total = sum(p.nbytes for p in jax.tree.leaves(state.params))
  on_device0 = sum(
    s.data.nbytes
    for p in jax.tree.leaves(state.params)
    for s in p.addressable_shards
    if s.device == jax.devices()[0]
  )
  assert on_device0 / total == pytest.approx(1 / 8, rel=0.1)


def _losses(steps, mesh, num_steps=5, seq_len=64):
  state = steps.init()
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(num_steps):
    x = rng.integers(0, 64, (16, seq_len + 1), dtype=np.int32)
    put = lambda a: jax.device_put(a, trainer_lib.batch_sharding(mesh))
    state, metrics = steps.train(state, {'inputs': put(x[:, :-1]), 'targets': put(x[:, 1:])})
    losses.append(float(metrics['loss']))
  return losses


def test_every_strategy_trains_like_one_device():
  _, one_mesh, one = _steps(dict(data=1), devices=jax.devices()[:1])
  reference = _losses(one, one_mesh)
  assert reference[-1] < reference[0]
  for strategy, axes in STRATEGIES.items():
    _, mesh, steps = _steps(axes)
    np.testing.assert_allclose(_losses(steps, mesh), reference, atol=1e-4, err_msg=strategy)


def test_splash_attention_runs_per_device_and_trains_like_xla():
  """The Pallas kernel (interpret mode on CPU) under shard_map: batch over data×fsdp, heads
  over tensor, each device with whole sequences; inside scanned, rematerialised blocks."""
  long = dict(block_size=128, n_head=4)
  _, one_mesh, one = _steps(dict(data=1), devices=jax.devices()[:1], **long)
  reference = _losses(one, one_mesh, num_steps=3, seq_len=128)
  levers = dict(attention='splash', scan_layers=True, remat='dots_saveable')
  _, mesh, steps = _steps(STRATEGIES['data=2×fsdp=2×tensor=2'], **levers, **long)
  batch = jax.ShapeDtypeStruct((16, 128), np.int32, sharding=trainer_lib.batch_sharding(mesh))
  hlo = steps.train.lower(steps.abstract, {'inputs': batch, 'targets': batch}).as_text()
  assert hlo.count('sdy.manual_computation') >= 2  # one kernel per block, and its backward
  np.testing.assert_allclose(_losses(steps, mesh, num_steps=3, seq_len=128), reference, atol=1e-4)


def test_activations_are_constrained_at_block_boundaries():
  cfg, mesh, steps = _steps(STRATEGIES['fsdp=4×tensor=2'])
  batch = jax.ShapeDtypeStruct((16, 64), np.int32, sharding=trainer_lib.batch_sharding(mesh))
  hlo = steps.train.lower(steps.abstract, {'inputs': batch, 'targets': batch}).as_text()
  # One constraint before and after each of the 2 blocks, in the forward and backward pass.
  assert hlo.count('sdy.sharding_constraint') >= 2 * cfg.model.n_layer


def test_a_dimension_the_mesh_cannot_split_is_a_config_error():
  cfg = tiny_config()
  cfg.mesh.update(data=1, fsdp=8)
  cfg.model.n_embd = 36  # 36 / fsdp=8 does not divide; n_head=2 still divides it
  model_cfg = model_configs.from_section(cfg.model, 64)
  with pytest.raises(config.ConfigError, match="'embed' dimension \\(36\\) does not divide over"):
    trainer_lib.build_steps(cfg, model_cfg, sharding.make_mesh(cfg.mesh))


def test_tokenizer_vocabularies_are_padded_for_tensor_parallelism():
  cfg = tiny_config()
  assert model_configs.from_section(cfg.model, 79).vocab_size == 128
  cfg.model.vocab_size = 100  # an explicit size is kept as given
  assert model_configs.from_section(cfg.model, 79).vocab_size == 100
