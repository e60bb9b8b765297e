"""`llm-jax compare`: runs side by side as a table, a config diff and a metric plot.

A run is a workdir (its `config.json` and `metrics.jsonl`, which every run writes whether or not
it reached W&B) or a W&B run fetched through the public API (`--wandb ENTITY/PROJECT`).
"""

import csv
import dataclasses
import io
import json
import statistics

from llm_jax import rundir, storage
from llm_jax.errors import MissingFile, UserError

X_AXES = ('step', 'tokens', 'time')
FORMATS = ('table', 'markdown', 'csv')
COLUMNS = ('run', 'steps', 'tokens', 'final eval_loss', 'best eval_loss', 'tokens/s', 'MFU', 'wall')


class CompareError(UserError, ValueError):
  """Runs or options that cannot be compared; the message names them."""


@dataclasses.dataclass
class Run:
  name: str
  config: dict  # flattened: {'optimizer.lr': 0.001, ...}
  rows: list[dict]  # metric rows, each with `step`


def flatten(tree: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}; lists become tuples so values compare and print alike."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      flat.update(flatten(value, name + '.'))
    else:
      flat[name] = _hashable(value)
  return flat


def _hashable(value):
  return tuple(map(_hashable, value)) if isinstance(value, list) else value


def load_workdir(path) -> Run:
  """A run from its workdir; FileNotFoundError naming what is missing."""
  path = storage.path(path)
  files = [path / rundir.CONFIG, path / rundir.METRICS]
  for f in files:
    if not f.is_file():
      raise MissingFile(f'{f} not found: is {path} a run?')
  rows = [json.loads(line) for line in files[1].read_text().splitlines() if line.strip()]
  return Run(path.name, flatten(json.loads(files[0].read_text())), rows)


def load_wandb(path: str, filters: dict, api=None) -> list[Run]:
  """Runs of the W&B project `ENTITY/PROJECT` matching `filters` (e.g. {'group': 'sweep'})."""
  # Run attributes filter by name; anything else is a config key.
  query = {k if k in ('group', 'state', 'tags') else f'config.{k}': v for k, v in filters.items()}
  try:
    if api is None:
      import wandb

      api = wandb.Api()
    runs = [
      Run(run.name, flatten(dict(run.config)), _history(run)) for run in api.runs(path, query)
    ]
  except Exception as e:  # noqa: BLE001 -- no network, no key, no such project
    raise CompareError(f'--wandb {path}: {str(e).splitlines()[0] if str(e) else e!r}') from None
  if not runs:
    raise CompareError(f'--wandb {path}: no runs match {filters}')
  return runs


def _history(run) -> list[dict]:
  """A W&B run's logged rows, in our row shape: `step` and the metrics."""
  rows = []
  for row in run.scan_history():
    if '_step' in row:
      metrics = {k: v for k, v in row.items() if not k.startswith('_')}
      rows.append({'step': row['_step'], **metrics})
  return rows


def _tokens_per_step(run: Run) -> int:
  return int(run.config.get('train.batch_size', 0)) * int(run.config.get('data.seq_len', 0))


def _clock(run: Run) -> dict[int, float]:
  """Training seconds elapsed at each logged step: each interval's mean step time times its
  steps, so evaluation and checkpoint saves are left out."""
  clock, last, elapsed = {}, 0, 0.0
  for row in run.rows:
    if row.get('step_time') is not None:
      elapsed += row['step_time'] * (row['step'] - last)
      last = row['step']
    clock[row['step']] = elapsed
  return clock


def series(run: Run, metric: str, x: str) -> tuple[list[float], list[float]]:
  """(x values, metric values) of the rows that hold `metric`; x in step, tokens or time (s)."""
  clock = _clock(run)
  points = [(row['step'], row[metric]) for row in run.rows if row.get(metric) is not None]
  scale = {'step': lambda s: s, 'tokens': lambda s: s * _tokens_per_step(run), 'time': clock.get}
  return [scale[x](s) for s, _ in points], [v for _, v in points]


def summary(run: Run) -> dict:
  """One table row for `run`."""
  evals = [r['eval_loss'] for r in run.rows if r.get('eval_loss') is not None]
  rates = [r['tokens_per_sec'] for r in run.rows if r.get('tokens_per_sec') is not None]
  mfus = [r['mfu'] for r in run.rows if r.get('mfu') is not None]
  steps = max((r['step'] for r in run.rows), default=0)
  timed = any(r.get('step_time') is not None for r in run.rows)
  return {
    'run': run.name,
    'steps': steps,
    'tokens': steps * _tokens_per_step(run),
    'final eval_loss': evals[-1] if evals else None,
    'best eval_loss': min(evals) if evals else None,
    'tokens/s': statistics.median(rates) if rates else None,
    'MFU': statistics.median(mfus) if mfus else None,
    'wall': max(_clock(run).values()) if timed else None,
  }


def config_diff(runs: list[Run]) -> dict[str, list]:
  """{key: [value in each run]} for the keys whose values differ between runs."""
  keys = sorted(set().union(*(r.config for r in runs)))
  missing = object()
  diff = {}
  for key in keys:
    values = [r.config.get(key, missing) for r in runs]
    if any(v != values[0] for v in values[1:]):
      diff[key] = ['-' if v is missing else v for v in values]
  return diff


def _cell(value) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:,.0f}' if abs(value) >= 1000 else f'{value:.4g}'
  if isinstance(value, int) and not isinstance(value, bool):
    return f'{value:,}'
  return str(value)


def _format_row(key: str, value) -> str:
  if key == 'MFU' and value is not None:
    return f'{value:.1%}'
  if key == 'wall' and value is not None:
    return f'{value:.0f}s'
  return _cell(value)


def render(header: list[str], rows: list[list[str]], fmt: str) -> str:
  """A text table: aligned columns, Markdown, or CSV."""
  if fmt == 'csv':
    out = io.StringIO()
    csv.writer(out, lineterminator='\n').writerows([header, *rows])
    return out.getvalue().rstrip('\n')
  if fmt == 'markdown':
    lines = [header, ['---'] * len(header), *rows]
    return '\n'.join('| ' + ' | '.join(line) + ' |' for line in lines)
  widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                   for line in [header, *rows])  # fmt: skip


def report(runs: list[Run], fmt: str = 'table') -> str:
  """The summary table, then the config keys that differ."""
  table = render(
    list(COLUMNS),
    [[_format_row(k, v) for k, v in summary(r).items()] for r in runs],
    fmt,
  )
  diff = config_diff(runs)
  if not diff:
    return table + '\n\nconfigs: identical'
  diff_table = render(
    ['config key', *(r.name for r in runs)],
    [[key, *map(_cell, values)] for key, values in diff.items()],
    fmt,
  )
  return f'{table}\n\n{diff_table}'


def smooth(values: list[float], window: int) -> list[float]:
  """Trailing moving average over `window` points (1: unchanged)."""
  out = []
  for i in range(len(values)):
    chunk = values[max(0, i - window + 1) : i + 1]
    out.append(sum(chunk) / len(chunk))
  return out


def plot(runs: list[Run], path, *, metric: str, x: str, log: bool, window: int) -> None:
  """A PNG overlaying `metric` against `x` for every run."""
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
  drawn = 0
  for run in runs:
    xs, ys = series(run, metric, x)
    if xs:
      marker = 'o' if len(xs) <= 50 else None  # sparse evaluations show their points
      ax.plot(xs, smooth(ys, window), label=run.name, linewidth=1.5, marker=marker, markersize=3)
      drawn += 1
  if not drawn:
    plt.close(fig)
    raise CompareError(f'--metric {metric}: no run logged it')
  ax.set_xlabel({'step': 'step', 'tokens': 'tokens', 'time': 'training time (s)'}[x])
  ax.set_ylabel(metric + (f' (moving average of {window})' if window > 1 else ''))
  if log:
    ax.set_yscale('log')
  ax.grid(True, alpha=0.3)
  ax.legend()
  ax.set_title(f'{metric} by {x}')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
