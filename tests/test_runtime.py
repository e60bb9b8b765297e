import os
import subprocess
import sys

from llm_jax import config, runtime

TOUCH_A_DEVICE = (
  'import jax; jax.jit(lambda x: x @ x.T)(jax.numpy.ones((64, 64))).block_until_ready()'
)


def run_python(code: str, xla_flags: str) -> subprocess.CompletedProcess:
  env = {**os.environ, 'XLA_FLAGS': xla_flags, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)


def test_our_flags_follow_the_users_and_never_replace_them():
  ours = ' '.join(config.GPU_FLAGS)
  users = '--xla_gpu_enable_triton_gemm=true --xla_dump_to=/tmp/x'
  merged = runtime.merged_flags(users, ours)
  assert merged == f'{users} --xla_gpu_enable_latency_hiding_scheduler=true'
  assert runtime.merged_flags(merged, ours) == merged  # applying twice adds nothing


def test_the_default_gpu_flags_exist_in_this_jaxlib():
  # XLA parses every flag on every backend and aborts on unknown ones: CPU can check GPU flags.
  assert run_python(TOUCH_A_DEVICE, ' '.join(config.GPU_FLAGS)).returncode == 0
  bogus = run_python(TOUCH_A_DEVICE, '--xla_gpu_no_such_flag=true')
  assert bogus.returncode != 0 and 'xla_gpu_no_such_flag' in bogus.stderr


def test_the_compilation_cache_keeps_programs_in_the_configured_directory(tmp_path):
  xla = dict(gpu_flags='', cache_dir=str(tmp_path), cache_min_compile_s=0)
  configure = f'runtime.configure(ml_collections.ConfigDict({xla!r}))'
  code = f'import ml_collections; from llm_jax import runtime; {configure}; {TOUCH_A_DEVICE}'
  assert run_python(code, '').returncode == 0
  assert any(tmp_path.iterdir())
