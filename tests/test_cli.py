import json
import os
import subprocess
import sys

import pytest

from llm_jax import cli
from tests.conftest import REPO


def llm_jax(*args, timeout=300):
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  return subprocess.run(
    [sys.executable, '-m', 'llm_jax', *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.mark.slow
def test_train_end_to_end_in_a_subprocess(tmp_path):
  workdir = tmp_path / 'run'
  args = ['train', '--config', 'configs/gpt_tiny.py', '--workdir', str(workdir)]
  args += ['--config.train.steps=40', '--config.eval.every_steps=20']
  result = llm_jax(*args, '--config.sample.max_new_tokens=80')
  assert result.returncode == 0, result.stderr
  assert '--- sample ---' in result.stdout
  assert 'final eval_loss' in result.stdout
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'eval_loss' in r] == [20, 40]
  assert json.loads((workdir / 'config.json').read_text())['train']['steps'] == 40
  # The same command again resumes from the final checkpoint: evaluates, trains no more.
  again = llm_jax(*args)
  assert again.returncode == 0, again.stderr
  assert 'resumed from' in again.stdout and 'final eval_loss' in again.stdout
  assert len((workdir / 'metrics.jsonl').read_text().splitlines()) == len(rows)


@pytest.mark.parametrize(
  'args, message',
  [
    (['--config.train.stepz=3'], 'unknown config key: train.stepz'),
    (['--config.modle.n_layer=3'], 'unknown config key: modle.n_layer'),
    (['--config.model.n_embd=65'], 'model.n_embd=65 must be divisible by model.n_head=2'),
    (['--config.train.steps=abc'], 'flag --config.train.steps=abc: invalid literal'),
    (['--config.train.batch_size=12'], 'must be divisible by mesh data×fsdp = 8'),
    (['--bogus=1'], 'unknown flag: --bogus'),
  ],
)
def test_bad_input_is_one_line_naming_the_field(args, message, tmp_path, capsys):
  argv = ['llm-jax', 'train', '--config', 'configs/gpt_tiny.py', '--workdir', str(tmp_path / 'w')]
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    code = cli.main(argv + args)
  finally:
    os.chdir(cwd)
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert err.count('\n') == 0 and message in err, err
  assert not (tmp_path / 'w').exists()  # nothing was created before the error


def test_missing_files_and_arguments(tmp_path):
  result = llm_jax('train', '--config', 'configs/nope.py', '--workdir', str(tmp_path))
  assert result.returncode == 2
  assert result.stderr.strip() == 'llm-jax train: error: config file not found: configs/nope.py'
  result = llm_jax(
    'train', '--config', 'configs/gpt_shakespeare.py:gpu', '--workdir', str(tmp_path)
  )
  assert result.returncode == 2
  assert "unknown argument 'gpu'" in result.stderr and result.stderr.count('\n') == 1
  result = llm_jax('frobnicate')
  assert result.returncode == 2 and "unknown command 'frobnicate'" in result.stderr
