import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from llm_jax import models, sharding
from llm_jax.train import loop
from tests.conftest import tiny_config


def mesh_cfg(data=-1, fsdp=1, tensor=1):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


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


def test_rules_map_logical_names_to_mesh_axes():
  assert sharding.logical_to_mesh(('embed', 'mlp')) == P('fsdp', 'tensor')
  assert sharding.logical_to_mesh(('batch', 'length')) == P(('data', 'fsdp'), None)
  assert sharding.logical_to_mesh((None, 'heads', 'kv')) == P(None, 'tensor', None)
  with pytest.raises(ValueError, match="'hidden' has no sharding rule"):
    sharding.logical_to_mesh(('hidden',))


def _state(mesh_axes):
  cfg = tiny_config()
  cfg.mesh.update(mesh_axes)
  model_cfg = models.model_config(cfg.model, vocab_size=64)
  mesh = sharding.make_mesh(cfg.mesh)
  return cfg, mesh, loop.build_steps(cfg, model_cfg, mesh)


def test_params_and_optimizer_state_follow_the_rules():
  _, mesh, (_, state, _, _) = _state(dict(data=2, fsdp=2, tensor=2))
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  fc = state.params['blocks'][0]['mlp']['fc']['kernel'][...]
  assert fc.sharding.spec == P('fsdp', 'tensor')
  qkv = state.params['blocks'][0]['attn']['qkv']['kernel'][...]
  assert qkv.sharding.spec == P('fsdp', None, 'tensor', None)
  adam = state.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
  assert adam.mu['blocks'][0]['mlp']['fc']['kernel'][...].sharding.spec == P('fsdp', 'tensor')
  assert adam.count.sharding.spec == P()
  # An fsdp×tensor-sharded kernel holds a quarter of the matrix on each device.
  assert fc.addressable_shards[0].data.shape == (fc.shape[0] // 2, fc.shape[1] // 2)


def test_losses_agree_across_parallelism_strategies():
  losses = {}
  for name, axes in {
    'data': dict(data=8),
    'fsdp': dict(data=1, fsdp=8),
    'fsdp×tensor': dict(data=2, fsdp=2, tensor=2),
  }.items():
    cfg, mesh, (_, state, train_step, _) = _state(axes)
    rng = np.random.default_rng(0)
    history = []
    put = lambda a, mesh=mesh: jax.device_put(a, loop.batch_sharding(mesh))
    for _ in range(3):
      x = rng.integers(0, 64, (16, 65), dtype=np.int32)
      state, metrics = train_step(state, put(x[:, :-1]), put(x[:, 1:]))
      history.append(float(metrics['loss']))
    losses[name] = history
  np.testing.assert_allclose(losses['fsdp'], losses['data'], rtol=1e-5)
  np.testing.assert_allclose(losses['fsdp×tensor'], losses['data'], rtol=1e-5)
