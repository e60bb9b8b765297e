"""Devices that are only described: plan a run for hardware this machine does not have.

`train --dry_run --topology=NAME` compiles the train step for such devices, as MaxText's
train_compile does. Nothing is placed and nothing runs, but the program is the one that hardware
would run: its kernels, library calls (cuBLAS, cuDNN, Pallas), shardings and memory.

- TPU slices (`v5e:2x2`, `v5p:2x2x1`, `v6e:4x4`, ...): libtpu's compiler, from the slice's name.
- GPUs (`h100`, `h100:8`, `h200`, `a100:8`): XLA's GPU compiler in JAX's CUDA plugin, given the
  chip's description (its `GpuTargetConfig`: multiprocessors, memory, caches, from the datasheet)
  instead of a device to query. `:N` is N GPUs of one host; `slices` hosts of them.
"""

import dataclasses
import os

from llm_jax.errors import ConfigError

KIB, MIB = 2**10, 2**20
# The share of a GPU's memory that JAX's allocator takes for itself (JAX's default, 0.75).
MEM_FRACTION_VAR = 'XLA_PYTHON_CLIENT_MEM_FRACTION'


@dataclasses.dataclass(frozen=True)
class GPU:
  name: str  # the device_kind a real one reports
  compute_capability: tuple[int, int]
  sms: int
  memory: int  # bytes, as the driver reports the device's total
  bandwidth: float  # memory bytes/s
  l2: int
  clock_ghz: float
  smem_per_sm: int
  smem_per_block: int  # opt-in maximum for one block
  fp32_per_sm: int


GPUS = {
  'h100': GPU('NVIDIA H100 80GB HBM3', (9, 0), 132, 84_942_979_072, 3.35e12, 50 * MIB, 1.98,
              228 * KIB, 227 * KIB, 128),
  'h200': GPU('NVIDIA H200', (9, 0), 132, 143_771 * MIB, 4.8e12, 50 * MIB, 1.98,
              228 * KIB, 227 * KIB, 128),
  'a100': GPU('NVIDIA A100-SXM4-80GB', (8, 0), 108, 81_920 * MIB, 2.039e12, 40 * MIB, 1.41,
              164 * KIB, 163 * KIB, 64),
}  # fmt: skip


def target_config(gpu: GPU) -> str:
  """The chip as XLA's GpuTargetConfigProto, in protobuf text format."""
  info = dict(
    threads_per_block_limit=1024,
    threads_per_warp=32,
    shared_memory_per_block=48 * KIB,
    shared_memory_per_core=gpu.smem_per_sm,
    threads_per_core_limit=2048,
    core_count=gpu.sms,
    fpus_per_core=gpu.fp32_per_sm,
    block_dim_limit_x=2**31 - 1,
    block_dim_limit_y=2**16 - 1,
    block_dim_limit_z=2**16 - 1,
    memory_bandwidth=int(gpu.bandwidth),
    l2_cache_size=gpu.l2,
    clock_rate_ghz=gpu.clock_ghz,
    device_memory_size=gpu.memory,
    shared_memory_per_block_optin=gpu.smem_per_block,
    registers_per_core_limit=2**16,
    registers_per_block_limit=2**16,
  )
  major, minor = gpu.compute_capability
  fields = ''.join(f'  {key}: {value}\n' for key, value in info.items())
  capability = f'  cuda_compute_capability {{ major: {major} minor: {minor} }}\n'
  return (
    f'gpu_device_info {{\n{fields}{capability}}}\n'
    # cuDNN 9 is what JAX's CUDA 13 wheels bring; XLA picks cuDNN features by this version.
    f'platform_name: "CUDA"\ndnn_version_info {{ major: 9 minor: 10 }}\n'
    f'device_description_str: "{gpu.name}"\n'
  )


def gpu_capacity(device) -> int | None:
  """What JAX's allocator would hold on a described GPU (None for any other device): the
  XLA_PYTHON_CLIENT_MEM_FRACTION share (default 0.75) of its memory, as on a real one."""
  gpu = next((g for g in GPUS.values() if g.name == device.device_kind), None)
  if gpu is None:
    return None
  return int(gpu.memory * float(os.environ.get(MEM_FRACTION_VAR, '0.75')))


def _gpus(name: str, slices: int) -> list:
  kind, _, count = name.partition(':')
  count = count or '1'
  if not count.isdigit() or int(count) < 1:
    raise ConfigError(f'--topology={name}: write {kind} or {kind}:N for N GPUs of one host')
  from jax.experimental import topologies

  try:
    desc = topologies.get_topology_desc(
      'gpus', 'cuda', target_config=target_config(GPUS[kind]), topology=f'1x{slices}x{count}'
    )
  except NotImplementedError:  # no CUDA plugin registered
    raise ConfigError(
      f"--topology={name}: needs JAX's CUDA plugin: pip install 'llm_jax[gpu]'"
    ) from None
  return list(desc.devices)


def _tpu_slices(name: str, slices: int) -> list:
  from jax.experimental import topologies

  # libtpu keeps a second process off a machine's TPUs with a lock file; described devices are
  # no TPU, and plans (parallel tests, say) may run side by side.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  # v4 and v5p chips have two TensorCores that a TPU VM shows as one device ("megacore").
  chip = 'megacore' if name.partition(':')[0] in ('v4', 'v5p') else 'default'
  try:
    desc = topologies.get_topology_desc(
      platform='tpu', topology_name=name, chip_config_name=chip, num_slices=slices
    )
    return list(desc.devices)
  except Exception as e:  # noqa: BLE001 -- RuntimeError without libtpu, JaxRuntimeError for names
    reason = str(e).splitlines()[0]
    if 'not installed' in reason:
      reason = "needs libtpu: pip install 'llm_jax[tpu]'"
    gpus = ', '.join(GPUS)
    raise ConfigError(f'--topology={name}: {reason} (or GPUs: {gpus}, as NAME or NAME:N)') from None


def devices(name: str, slices: int = 1) -> list:
  """The devices of `slices` TPU slices or GPU hosts `name`, with no hardware behind them;
  ConfigError naming the flag when the compiler is missing or the name is unknown."""
  if name.partition(':')[0] in GPUS:
    return _gpus(name, slices)
  return _tpu_slices(name, slices)
