"""What an asynchronous checkpoint save costs the step loop, for a GPT-2 124M training state.

    python benchmarks/checkpoint_save.py [--seq_len 128] [--steps 5] [--json out.json]

Builds the real gpt2_124m state (fp32 params + AdamW moments, ~1.5 GB) on the current backend,
times train steps without saving, then starts one save and measures (a) how long `save()` blocks
the loop (the device-to-host copy), (b) the step right after it, while the write runs in the
background, and (c) how long the background write takes. Batch 1 keeps CPU steps short; the
save cost does not depend on the batch.
"""

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from llm_jax import checkpoint, config, sharding
from llm_jax.models import configs as model_configs
from llm_jax.train import trainer as trainer_lib


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seq_len', type=int, default=128)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--json', type=pathlib.Path)
  args = parser.parse_args()

  cfg = config.preset('gpt2_124m')
  cfg.train.update(batch_size=jax.device_count(), grad_accum_steps=1)
  cfg.data.seq_len = args.seq_len
  model_cfg = model_configs.from_section(cfg.model, 0)
  mesh = sharding.make_mesh(cfg.mesh)
  steps = trainer_lib.build_steps(cfg, model_cfg, mesh)
  state = steps.init()
  tokens = np.random.default_rng(0).integers(0, 50257, (cfg.train.batch_size, args.seq_len + 1))
  put = lambda a: jax.device_put(a.astype(np.int32), trainer_lib.batch_sharding(mesh))
  inputs, targets = put(tokens[:, :-1]), put(tokens[:, 1:])

  def step(state):
    start = time.perf_counter()
    state, metrics = steps.train(state, {'inputs': inputs, 'targets': targets})
    jax.block_until_ready(metrics)
    return state, time.perf_counter() - start

  state, _ = step(state)  # compile
  plain = []
  for _ in range(args.steps):
    state, seconds = step(state)
    plain.append(seconds)

  with tempfile.TemporaryDirectory() as workdir:
    ckpt = checkpoint.Checkpointer(pathlib.Path(workdir), cfg.ckpt)
    start = time.perf_counter()
    ckpt.save(1, state)
    blocking = time.perf_counter() - start
    state, during = step(state)
    ckpt.wait()
    write = time.perf_counter() - start
    ckpt.close()
    size = sum(f.stat().st_size for f in pathlib.Path(workdir).rglob('*') if f.is_file())

  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  result = {
    'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
    'state_gb': state_bytes / 1e9,
    'checkpoint_gb_on_disk': size / 1e9,
    'step_s_median': statistics.median(plain),
    'save_blocking_s': blocking,
    'step_during_write_s': during,
    'save_total_s': write,
    'blocking_over_step': blocking / statistics.median(plain),
  }
  for key, value in result.items():
    print(f'{key:<24} {value:.3f}' if isinstance(value, float) else f'{key:<24} {value}')
  if args.json:
    args.json.write_text(json.dumps(result, indent=2) + '\n')


if __name__ == '__main__':
  sys.exit(main())
