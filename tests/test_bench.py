import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import reference_gpt
from llm_jax import bench, config, perf
from llm_jax.models import registry
from llm_jax.models.configs import GPTConfig
from llm_jax.train import losses, tasks
from tests.conftest import REPO, needs_libtpu, tiny_config


def as_reference(params):
  """NNX GPT parameters in the plain-JAX reference's layout (same leaf names, other nesting)."""
  p = nnx.to_pure_dict(params)
  return dict(
    wte=p['wte']['embedding'],
    wpe=p['wpe']['embedding'],
    ln_f=p['ln_f'],
    blocks=[
      dict(
        ln1=b['ln_1'],
        ln2=b['ln_2'],
        qkv=b['attn']['qkv'],
        proj=b['attn']['proj'],
        fc=b['mlp']['fc'],
        out=b['mlp']['proj'],
      )
      for _, b in sorted(p['blocks'].items())
    ],
  )


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_reference_computes_the_same_function_as_the_model(dtype):
  cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dtype=dtype)
  graphdef, params = nnx.split(registry.build(cfg, seed=0), nnx.Param)
  x = jax.random.randint(jax.random.key(0), (2, 17), 0, 50)
  loss = lambda p: losses.cross_entropy(nnx.merge(graphdef, p)(x[:, :-1]), x[:, 1:])
  ref_loss = lambda p: reference_gpt.loss_fn(p, x[:, :-1], x[:, 1:], jnp.dtype(dtype))
  ours, grads = jax.value_and_grad(loss)(params)
  ref, ref_grads = jax.value_and_grad(ref_loss)(as_reference(params))
  tol = 1e-5 if dtype == 'float32' else 2e-2
  assert float(ref) == pytest.approx(float(ours), rel=tol)
  if dtype == 'float32':  # same gradients too (bf16 rounds them differently)
    pairs = zip(jax.tree.leaves(as_reference(grads)), jax.tree.leaves(ref_grads), strict=True)
    for a, b in pairs:
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_bench_reports_throughput_and_the_reference_refuses_many_devices():
  cfg = tiny_config()
  result = bench.run(cfg, steps=3, warmup=1)
  assert result['tokens_per_sec'] == pytest.approx(16 * 64 / result['step_s'])
  assert result['mfu'] is None  # CPU has no peak in the table: unknown, not guessed
  assert reference_gpt.mismatch(cfg) == 'the reference runs on one device'
  assert 'tokens/s' in bench.format_table(result)


def test_bench_times_the_mlm_step_of_a_bert(tmp_path):
  cfg = config.preset('bert_tiny')
  cfg.train.batch_size = 16
  result = bench.run(cfg, steps=2, warmup=1)
  assert result['tokens_per_sec'] == pytest.approx(16 * 128 / result['step_s'])
  assert reference_gpt.mismatch(cfg).startswith('the reference is a GPT language model')
  # The vocabulary projection counts at the 37 scored positions of 128 only (perf.py).
  model_cfg = tasks.make(cfg, None).model_cfg
  assert result['flops_per_token'] == perf.flops_per_token(model_cfg, 128, scored=37 / 128)
  assert result['flops_per_token'] < perf.flops_per_token(model_cfg, 128)


def _run_on_one_cpu_device(*command):
  """`python COMMAND` in the repo with one CPU device, as on a user's machine."""
  env = dict(os.environ, XLA_FLAGS='')
  return subprocess.run(
    [sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )


@pytest.mark.slow
def test_reference_script_times_framework_and_reference_on_one_cpu_device(tmp_path):
  out = tmp_path / 'reference.json'
  result = _run_on_one_cpu_device(
    'benchmarks/reference_gpt.py', '--config', 'configs/gpt_tiny.py', '--steps', '5',
    '--warmup', '2', '--json', str(out),
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert 'framework / reference' in result.stdout
  data = json.loads(out.read_text())
  assert data['num_devices'] == 1 and data['ratio'] > 0
  assert data['ratio'] == pytest.approx(data['step_s'] / data['reference_step_s'])


@pytest.mark.slow
def test_bench_cli_times_the_framework_step_on_one_cpu_device(tmp_path):
  out = tmp_path / 'bench.json'
  result = _run_on_one_cpu_device(
    '-m', 'llm_jax', 'bench', '--config', 'configs/gpt_tiny.py', '--steps', '2', '--warmup', '1',
    '--json', str(out),
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert 'tokens/s' in result.stdout
  data = json.loads(out.read_text())
  assert data['num_devices'] == 1
  assert data['tokens_per_sec'] == pytest.approx(16 * 64 / data['step_s'])


def test_reference_script_rejects_bad_overrides_in_one_line(capsys):
  spec = str(REPO / 'configs/gpt_tiny.py')
  for bad, message in (
    ('--config.train.stepz=3', 'unknown config key: train.stepz'),
    ('--config.train.steps=many', 'flag --config.train.steps=many: invalid literal'),
  ):
    with pytest.raises(SystemExit) as exit_info:
      reference_gpt.main(['--config', spec, bad])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and f'error: {message}' in line


def test_mfu_accounting():
  cfg = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)
  assert perf.matmul_params(cfg) == 12 * 12 * 768**2 + 50304 * 768
  assert perf.flops_per_token(cfg, 1024) == 6 * perf.matmul_params(cfg) + 12 * 12 * 1024 * 768
  assert perf.peak_flops() is None  # CPU
  kinds = {
    'NVIDIA H100 80GB HBM3': 989e12,
    'NVIDIA H100 PCIe': 756e12,
    'NVIDIA H100 NVL': 835e12,
    'NVIDIA H200': 989e12,
    'TPU v5 lite': 197e12,
    'TPU v5p': 459e12,
  }
  for kind, peak in kinds.items():
    assert perf.peak_flops(types.SimpleNamespace(device_kind=kind)) == peak, kind
  assert perf.mfu(1e6, cfg, 1024, 1) is None


def test_flops_formula_matches_xla_cost_analysis():
  """6·N + 12·L·T·d against XLA's count for a forward+backward pass; the rest (softmax, norms,
  GELU, the optimizer-free elementwise work) stays within 3% at this size (1-2% measured)."""
  cfg = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=128)
  graphdef, params = nnx.split(registry.build(cfg, seed=0), nnx.Param)
  x = jax.random.randint(jax.random.key(0), (4, 65), 0, 512)
  loss = lambda p: losses.cross_entropy(nnx.merge(graphdef, p)(x[:, :-1]), x[:, 1:])
  counted = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()['flops']
  assert counted == pytest.approx(perf.flops_per_token(cfg, 64) * 4 * 64, rel=0.03)


@pytest.mark.slow
def test_lever_sweep_runs_each_cell_against_the_baseline_of_its_batch(tmp_path):
  out = tmp_path / 'levers.json'
  command = [
    sys.executable, 'benchmarks/levers.py', '--config', 'configs/gpt_tiny.py', '--batch_sizes',
    '8', '--levers', 'scan,loss_chunk', '--loss_chunk', '7', '--steps', '2', '--json', str(out),
    '--config.model.vocab_size=256',
  ]  # fmt: skip
  env = dict(os.environ, XLA_FLAGS='')  # one CPU device
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  base, scan, chunk = json.loads(out.read_text())
  assert [c['lever'] for c in (base, scan, chunk)] == ['baseline', 'scan', 'loss_chunk']
  assert base['versus'] == 1.0
  assert scan['versus'] == pytest.approx(base['result']['step_s'] / scan['result']['step_s'])
  assert base['result']['config']['vocab_size'] == scan['result']['config']['vocab_size'] == 256
  assert (base['result']['config']['scan_layers'], scan['result']['config']['scan_layers']) == (
    False,
    True,
  )
  assert base['result']['config']['attention'] == 'xla'  # what 'auto' resolved to on CPU
  assert 'train.loss_chunk=7 must divide data.seq_len=64' in chunk['result']['error']
  assert 'failed: ' in done.stdout  # the table shows the failed cell, and the sweep goes on


@pytest.mark.slow
@needs_libtpu
def test_lever_sweep_plans_tpu_memory_without_a_tpu(tmp_path):
  out = tmp_path / 'levers.json'
  command = [
    sys.executable, 'benchmarks/levers.py', '--config', 'configs/gpt_tiny.py', '--batch_sizes',
    '64', '--levers', 'loss_chunk', '--loss_chunk', '16', '--topology', 'v5e:2x2',
    '--json', str(out),
  ]  # fmt: skip
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  base, chunk = json.loads(out.read_text())
  assert base['result']['temporaries'] > chunk['result']['temporaries'] > 0
  assert chunk['versus'] == pytest.approx(chunk['result']['total'] / base['result']['total'])
  assert 'temporaries GiB' in done.stdout and 'memory vs base' in done.stdout
  assert base['result']['kernels'] > base['result']['optimizer_kernels'] > 0
