"""Each performance lever's effect on a config's train step: one `llm-jax bench` per cell.

    python benchmarks/levers.py [--config configs/gpt2.py:124m] [--batch_sizes 12,32,64]
        [--levers baseline,scan,remat_dots,...] [--steps 20] [--json levers.json]
        [--config.KEY=VALUE ...]   # applied to every cell

For every batch size, the baseline (the config as it is) and then each lever run as separate
`llm-jax bench` processes, because XLA flags are read once per process and peak device memory
is a per-process high-water mark. Every cell reports median step time, tokens/s, MFU, peak
memory and compile time, and its speed relative to the baseline at the same batch size, measured
in this same run. A cell that fails (e.g. out of memory) is reported with its last error line.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

# Lever name -> config overrides on top of the benchmarked config ({loss_chunk}: the flag).
LEVERS = {
  'baseline': (),
  'scan': ('--config.model.scan_layers=True',),
  'remat_dots': ('--config.model.remat=dots_saveable',),
  'remat_full': ('--config.model.remat=full',),
  'scan_remat_dots': ('--config.model.scan_layers=True', '--config.model.remat=dots_saveable'),
  'loss_chunk': ('--config.train.loss_chunk={loss_chunk}',),
  'xla_attention': ('--config.model.attention=xla',),
  'no_gpu_flags': ('--config.xla.gpu_flags=',),
}


def bench_cell(config: str, batch_size: int, overrides, steps: int) -> dict:
  """One `llm-jax bench` process; its JSON result, or {'error': last stderr line}."""
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / 'result.json'
    command = [
      sys.executable, '-m', 'llm_jax', 'bench', '--config', config,
      f'--config.train.batch_size={batch_size}', '--config.train.grad_accum_steps=1',
      f'--steps={steps}', '--reference=off', f'--json={out}', *overrides,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0 or not out.exists():
      lines = [line for line in done.stderr.splitlines() if line.strip()] or ['no output']
      return {'error': lines[-1][:200]}
    return json.loads(out.read_text())


def table(cells: list[dict]) -> str:
  header = ('batch', 'lever', 'step ms', 'tokens/s', 'MFU', 'peak GiB', 'compile s', 'vs base')
  rows = [header]
  for c in cells:
    r = c['result']
    if 'error' in r:
      rows.append((str(c['batch_size']), c['lever'], *[''] * 5, 'failed: ' + r['error']))
      continue
    mem = r['peak_memory_bytes']
    rows.append((
      str(c['batch_size']), c['lever'], f'{r["step_s"] * 1e3:.1f}', f'{r["tokens_per_sec"]:,.0f}',
      'unknown' if r['mfu'] is None else f'{r["mfu"]:.1%}',
      'n/a' if mem is None else f'{mem / 2**30:.1f}', f'{r["compile_s"]:.1f}',
      '' if c.get('speedup') is None else f'{c["speedup"]:.3f}x',
    ))  # fmt: skip
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  return '\n'.join('  '.join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/gpt2.py:124m')
  parser.add_argument('--batch_sizes', default='12,32,64')
  parser.add_argument('--levers', default=','.join(LEVERS))
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--loss_chunk', type=int, default=128, help='positions per loss chunk')
  parser.add_argument('--json', default='')
  args, common = parser.parse_known_args()
  if any(not arg.startswith('--config.') for arg in common):
    parser.error(f'unrecognized arguments: {" ".join(common)}')
  levers = args.levers.split(',')
  unknown = [name for name in levers if name not in LEVERS]
  if unknown:
    parser.error(f'unknown lever {unknown[0]!r}; choose from {", ".join(LEVERS)}')
  if 'baseline' not in levers:
    levers.insert(0, 'baseline')
  cells = []
  for batch_size in map(int, args.batch_sizes.split(',')):
    base = None
    for lever in levers:
      overrides = [*common, *(o.format(loss_chunk=args.loss_chunk) for o in LEVERS[lever])]
      result = bench_cell(args.config, batch_size, overrides, args.steps)
      base = result if lever == 'baseline' else base
      speedup = None
      if 'error' not in result and base and 'error' not in base:
        speedup = base['step_s'] / result['step_s']
      cells.append(dict(batch_size=batch_size, lever=lever, result=result, speedup=speedup))
      print(table(cells[-1:]).splitlines()[-1], flush=True)
  print(table(cells))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(cells, indent=2) + '\n')


if __name__ == '__main__':
  main()
