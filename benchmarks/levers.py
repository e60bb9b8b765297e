"""Each performance lever's effect on a config's train step: one `llm-jax bench` per cell.

    python benchmarks/levers.py [--config configs/gpt2.py:124m] [--batch_sizes 12,32,64]
        [--levers baseline,scan,remat_dots,...] [--steps 20] [--json levers.json]
        [--topology v5e:2x2|h100] [--config.KEY=VALUE ...]   # overrides apply to every cell

For every batch size, the baseline (the config as it is) and then each lever run as separate
`llm-jax bench` processes, because XLA flags are read once per process and peak device memory
is a per-process high-water mark. Every cell reports median step time, tokens/s, MFU, peak
memory and compile time, and its speed relative to the baseline at the same batch size, measured
in this same run. A cell that fails (e.g. out of memory) is reported with its last error line.

With `--topology`, nothing runs: each cell is `llm-jax train --dry_run --topology=...`, compiled
for that described TPU slice (libtpu) or GPU (JAX's CUDA plugin), and reports the per-device
memory its compiler plans (temporaries, total), the kernels one step launches, compile time and
memory relative to the baseline. A cell that would not fit the device fails with the plan's error.
"""

import argparse
import json
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
  'scan_remat_dots_chunk': (
    '--config.model.scan_layers=True',
    '--config.model.remat=dots_saveable',
    '--config.train.loss_chunk={loss_chunk}',
  ),
  'loss_chunk': ('--config.train.loss_chunk={loss_chunk}',),
  'xla_attention': ('--config.model.attention=xla',),
  'splash': ('--config.model.attention=splash',),  # TPU
  'no_gpu_flags': ('--config.xla.gpu_flags=',),
}


def run_cell(args, batch_size: int, overrides) -> dict:
  """One `llm-jax bench` process (with --topology: one TPU dry run); its JSON result, or
  {'error': last stderr line}."""
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / 'result.json'
    cell = [
      '--config', args.config, f'--config.train.batch_size={batch_size}',
      '--config.train.grad_accum_steps=1', f'--json={out}', *overrides,
    ]  # fmt: skip
    if args.topology:
      command = ['train', '--dry_run', f'--topology={args.topology}', *cell]
    else:
      command = ['bench', f'--steps={args.steps}', *cell]
    done = subprocess.run(
      [sys.executable, '-m', 'llm_jax', *command], capture_output=True, text=True
    )
    if done.returncode != 0 or not out.exists():
      lines = [line for line in done.stderr.splitlines() if line.strip()] or ['no output']
      return {'error': lines[-1][:200]}
    return json.loads(out.read_text())


GIB = 2**30
# (header, cell -> text) per column; a cell's `versus` is its ratio to the baseline.
TIMED = (
  ('step ms', lambda r: f'{r["step_s"] * 1e3:.1f}'),
  ('tokens/s', lambda r: f'{r["tokens_per_sec"]:,.0f}'),
  ('MFU', lambda r: 'unknown' if r['mfu'] is None else f'{r["mfu"]:.1%}'),
  ('peak GiB', lambda r: 'n/a' if r['peak_memory_bytes'] is None else
   f'{r["peak_memory_bytes"] / GIB:.1f}'),
  ('compile s', lambda r: f'{r["compile_s"]:.1f}'),
)  # fmt: skip
PLANNED = (
  ('temporaries GiB', lambda r: f'{r["temporaries"] / GIB:.2f}'),
  ('total GiB', lambda r: f'{r["total"] / GIB:.2f}'),
  ('kernels', lambda r: f'{r["kernels"]:,}'),
  ('compile s', lambda r: f'{r["compile_s"]:.1f}'),
)


def versus(result: dict, base: dict | None, planned: bool) -> float | None:
  """Speed-up over the baseline (timed), or memory relative to it (planned)."""
  if base is None or 'error' in base or 'error' in result:
    return None
  return result['total'] / base['total'] if planned else base['step_s'] / result['step_s']


def table(cells: list[dict], planned: bool) -> str:
  columns = PLANNED if planned else TIMED
  header = ('batch', 'lever', *(name for name, _ in columns), 'memory vs base' if planned
            else 'speed vs base')  # fmt: skip
  rows = [header]
  for c in cells:
    r = c['result']
    if 'error' in r:
      rows.append((str(c['batch_size']), c['lever'], *[''] * len(columns), 'failed: ' + r['error']))
      continue
    ratio = '' if c['versus'] is None else f'{c["versus"]:.3f}x'
    rows.append((str(c['batch_size']), c['lever'], *(show(r) for _, show in columns), ratio))
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
  parser.add_argument('--topology', default='', help='plan for this TPU slice or GPU instead')
  args, common = parser.parse_known_args()
  if any(not arg.startswith('--config.') for arg in common):
    parser.error(f'unrecognized arguments: {" ".join(common)}')
  levers = args.levers.split(',')
  unknown = [name for name in levers if name not in LEVERS]
  if unknown:
    parser.error(f'unknown lever {unknown[0]!r}; choose from {", ".join(LEVERS)}')
  if 'baseline' not in levers:
    levers.insert(0, 'baseline')
  planned = bool(args.topology)
  cells = []
  for batch_size in map(int, args.batch_sizes.split(',')):
    base = None
    for lever in levers:
      overrides = [*common, *(o.format(loss_chunk=args.loss_chunk) for o in LEVERS[lever])]
      result = run_cell(args, batch_size, overrides)
      base = result if lever == 'baseline' else base
      ratio = versus(result, base, planned)
      cells.append(dict(batch_size=batch_size, lever=lever, result=result, versus=ratio))
      print(table(cells[-1:], planned).splitlines()[-1], flush=True)
      if args.json:  # after every cell: a sweep cut short by a time limit keeps what it measured
        pathlib.Path(args.json).write_text(json.dumps(cells, indent=2) + '\n')
  print(table(cells, planned))


if __name__ == '__main__':
  main()
