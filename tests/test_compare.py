import csv
import io
import json

import pytest
from matplotlib import image

from llm_jax import cli, compare
from tests.conftest import tiny_config


def fake_run(path, lr, losses):
  """A workdir as training writes it: config.json and metrics.jsonl."""
  cfg = tiny_config()
  cfg.optimizer.lr = lr
  path.mkdir()
  (path / 'config.json').write_text(cfg.to_json_best_effort())
  rows = []
  for i, loss in enumerate(losses, 1):
    rows.append({'step': 10 * i, 'loss': loss + 0.1, 'tokens_per_sec': 1000.0 * i, 'step_time': 0.5,
                 'mfu': None})  # fmt: skip
    rows.append({'step': 10 * i, 'eval_loss': loss})
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return path


@pytest.fixture
def two_runs(tmp_path):
  return (
    fake_run(tmp_path / 'lr_high', 3e-3, [3.0, 2.5, 2.6]),
    fake_run(tmp_path / 'lr_low', 1e-3, [3.2, 2.9, 2.7]),
  )


def test_compare_prints_the_table_the_diff_and_writes_a_plot(two_runs, tmp_path, capsys):
  plot = tmp_path / 'loss.png'
  code = cli.main(['llm-jax', 'compare', *map(str, two_runs), '--plot', str(plot), '--smooth', '2'])
  out = capsys.readouterr().out
  assert code == 0
  lines = out.splitlines()
  assert lines[0].split()[:3] == ['run', 'steps', 'tokens']
  assert lines[1].split()[:6] == ['lr_high', '30', '30,720', '2.6', '2.5', '2,000']
  assert lines[2].split()[:6] == ['lr_low', '30', '30,720', '2.7', '2.7', '2,000']
  assert lines[1].split()[-1] == '15s'  # 30 steps of 0.5 s
  diff = out.split('\n\n')[1].splitlines()
  assert diff[0].split() == ['config', 'key', 'lr_high', 'lr_low']
  assert [d.split() for d in diff[1:]] == [['optimizer.lr', '0.003', '0.001']]  # only that key
  pixels = image.imread(plot)
  assert plot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and pixels.shape[0] > 300


def test_markdown_and_csv_formats(two_runs, capsys):
  runs = [compare.load_workdir(p) for p in two_runs]
  md = compare.report(runs, 'markdown').split('\n\n')[0].splitlines()
  assert md[0].startswith('| run | steps |') and md[1].startswith('| --- |') and len(md) == 4
  table = list(csv.reader(io.StringIO(compare.report(runs, 'csv').split('\n\n')[0])))
  assert table[0] == list(compare.COLUMNS) and table[2][0] == 'lr_low'


def test_series_by_tokens_and_time(two_runs):
  run = compare.load_workdir(two_runs[0])
  assert compare.series(run, 'eval_loss', 'tokens')[0] == [10240, 20480, 30720]  # 16 × 64 a step
  assert compare.series(run, 'eval_loss', 'time')[0] == [5.0, 10.0, 15.0]
  assert compare.smooth([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]


class FakeWandbRun:
  def __init__(self, name, lr, history):
    self.name, self.config, self._history = name, {'optimizer': {'lr': lr}}, history

  def scan_history(self):
    return iter(self._history)


class FakeWandbApi:
  """Stands in for wandb.Api(): records the query, returns two runs."""

  def __init__(self):
    self.queries = []

  def runs(self, path, filters):
    self.queries.append((path, filters))
    return [
      FakeWandbRun('a', 0.1, [{'_step': 5, 'eval_loss': 2.0, '_runtime': 3.0}]),
      FakeWandbRun('b', 0.2, [{'_step': 5, 'eval_loss': 1.5}, {'_timestamp': 1.0}]),
    ]


def test_wandb_runs_through_the_public_api(capsys):
  api = FakeWandbApi()
  runs = compare.load_wandb('team/llm_jax', {'group': 'sweep', 'optimizer.lr': '0.1'}, api=api)
  assert api.queries == [('team/llm_jax', {'group': 'sweep', 'config.optimizer.lr': '0.1'})]
  assert [r.rows for r in runs] == [
    [{'step': 5, 'eval_loss': 2.0}],
    [{'step': 5, 'eval_loss': 1.5}],
  ]
  assert compare.config_diff(runs) == {'optimizer.lr': [0.1, 0.2]}


def test_bad_compare_input_is_one_line(tmp_path, two_runs, capsys):
  assert cli.main(['llm-jax', 'compare', str(tmp_path / 'nope')]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count('\n') == 0 and 'nope/config.json not found' in err
  args = ['llm-jax', 'compare', str(two_runs[0]), '--plot', str(tmp_path / 'x.png')]
  assert cli.main(args + ['--metric', 'bleu']) == 2
  assert capsys.readouterr().err.strip().endswith('--metric bleu: no run logged it')
  assert cli.main(['llm-jax', 'compare', str(two_runs[0]), '--x', 'epochs']) == 2
  assert "argument --x: invalid choice: 'epochs'" in capsys.readouterr().err
