"""Test setup: 8 fake CPU devices (set before JAX is imported) and small shared fixtures."""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import importlib.util  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

from llm_jax import config  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# libtpu is in the test extra wherever it is built (Linux x86-64, as CI).
needs_libtpu = pytest.mark.skipif(
  importlib.util.find_spec('libtpu') is None, reason='libtpu is built for Linux x86-64 only'
)
# So are JAX's CUDA plugin, ptxas and cuDNN, which compile for GPUs that are only described.
needs_cuda_plugin = pytest.mark.skipif(
  not all(importlib.util.find_spec(m) for m in ('jax_plugins.xla_cuda13', 'nvidia.cudnn')),
  reason="JAX's CUDA plugin is in the test extra on Linux x86-64 only",
)


def tiny_config(**train):
  """gpt_tiny with a short schedule; `train` overrides train.* keys."""
  c = config.preset('gpt_tiny')
  c.train.update(dict(steps=30, batch_size=16, log_every=10), **train)
  c.eval.update(every_steps=0, batches=2, batch_size=16)
  c.optimizer.update(lr=3e-3, warmup_steps=5)
  c.sample.max_new_tokens = 0
  c.wandb.mode = 'disabled'
  return c


@pytest.fixture
def tiny():
  return tiny_config()
