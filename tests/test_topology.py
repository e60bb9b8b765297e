"""Plans for described GPUs: XLA's GPU compiler (JAX's CUDA plugin) with no GPU here."""

import re

import jax
import pytest
from flax import nnx

from llm_jax import cli, config, sharding, topology
from llm_jax.errors import ConfigError
from llm_jax.train import plan
from llm_jax.train import trainer as trainer_lib
from tests.conftest import REPO, needs_cuda_plugin, tiny_config
from tests.test_gpt import attention_case

H100_GIB = 0.75 * topology.GPUS['h100'].memory / 2**30  # what JAX's allocator takes: 59.33


def described_gradient_hlo(name: str, dtype: str) -> str:
  """The compiled H100 program of the gradients of the attention case's logits (the one the GPU
  test runs: packed documents for GPT, padded rows for BERT)."""
  graphdef, params, x, extra = attention_case(name, dtype=dtype)
  mesh = sharding.make_mesh(config.base_config().mesh, topology.devices('h100'))
  on_mesh = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding.replicated(mesh))
  loss = lambda params, x, extra: nnx.merge(graphdef, params)(x, **extra).sum()
  with sharding.activation_sharding(mesh):
    lowered = jax.jit(jax.grad(loss)).lower(*jax.tree.map(on_mesh, (params, x, extra)))
  return lowered.compile().as_text()


@needs_cuda_plugin
@pytest.mark.parametrize('name', ['gpt', 'bert'])
def test_auto_attention_on_a_described_h100_is_cudnns_flash_kernel(name):
  """`auto` is resolved for the devices a step is traced for, not for this CPU host."""
  cudnn = lambda hlo: set(re.findall(r'custom_call_target="__cudnn\$fmha(\w+)"', hlo))
  # Packed documents reach cuDNN as a (B, 1, T, T) bias; padded rows as key lengths.
  softmax = 'ScaleBiasSoftmax' if name == 'gpt' else 'Softmax'
  assert cudnn(described_gradient_hlo(name, 'bfloat16')) == {softmax, softmax + 'Backward'}
  assert not cudnn(described_gradient_hlo(name, 'float32'))  # fp32: XLA's attention


@needs_cuda_plugin
def test_a_gpu_plan_holds_what_jaxs_allocator_would_take(capsys, monkeypatch):
  argv = ['llm-jax', 'train', '--config', str(REPO / 'configs/gpt_tiny.py'), '--dry_run']
  assert cli.main(argv + ['--topology=h100', '--config.model.dtype=bfloat16']) == 0
  out = capsys.readouterr().out
  assert 'over 1 NVIDIA H100 80GB HBM3 (gpu) device(s)' in out
  assert f'of {H100_GIB:.2f} GiB' in out
  kernels = re.search(r'kernels per step: (\d+) \((\d+) in the optimizer update\)', out)
  assert kernels and 0 < int(kernels[2]) < int(kernels[1])

  big = ['--config.train.batch_size=32768', '--config.model.n_embd=512']
  assert cli.main(argv + ['--topology=h100', *big]) == 2
  err = capsys.readouterr().err.strip()
  assert re.fullmatch(
    rf'llm-jax train: error: the train step needs [\d.]+ GiB per device but a device holds'
    rf' {H100_GIB:.2f} GiB: raise mesh.fsdp .*',
    err,
  ), err

  monkeypatch.setenv(topology.MEM_FRACTION_VAR, '0.5')
  assert topology.gpu_capacity(topology.devices('h100')[0]) == topology.GPUS['h100'].memory // 2


@needs_cuda_plugin
def test_two_described_gpu_hosts_put_the_dcn_axis_across_them():
  cfg = tiny_config()
  cfg.mesh.update(data=2, dcn_data=2, fsdp=4)
  trainer = trainer_lib.Trainer(cfg, workdir=None, devices=topology.devices('h100:4', slices=2))
  hosts = [{d.process_index for d in row.flat} for row in trainer.mesh.devices]
  assert hosts == [{0}, {1}]  # data crosses hosts; fsdp stays on one host's 4 GPUs
  assert plan.memory_plan(trainer)['total'] > 0
  assert 'all-gather' in trainer.train_step.as_text()  # FSDP gathers each layer's weights


@pytest.mark.parametrize(
  'name, message',
  [
    ('h100:0', '--topology=h100:0: write h100 or h100:N for N GPUs of one host'),
    ('h100:two', '--topology=h100:two: write h100 or h100:N for N GPUs of one host'),
    ('v9:2x2', r'--topology=v9:2x2: .* \(or GPUs: h100, h200, a100, as NAME or NAME:N\)'),
  ],
)
def test_a_topology_that_cannot_be_described_is_one_line(name, message):
  with pytest.raises(ConfigError, match=message):
    topology.devices(name)


HLO = """HloModule step

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %gte = f32[8] get-tuple-element(%p), index=1
  %fusion.1 = f32[8] fusion(%gte), kind=kLoop, calls=%fused_a
  %fusion.2 = f32[8] fusion(%fusion.1), calls=%fused_b, metadata={op_name="jit(step)/optimizer/mul"}
  ROOT %t = (s32[], f32[8]) tuple(%gte, %fusion.2)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8] parameter(0)
  %gemm = (f32[8], s8[0]) custom-call(%a), custom_call_target="__cublas$lt$matmul"
  %w = (s32[], f32[8]) while(%t), body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %copy = f32[8] copy(%a)
  ROOT %r = f32[8] bitcast(%copy)
}
"""  # fmt: skip


def test_kernel_counts_run_loop_bodies_once_per_trip():
  assert plan.kernel_counts(HLO) == {'kernels': 1 + 3 * 2 + 1, 'optimizer_kernels': 3}
