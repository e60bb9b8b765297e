import json
import math
import os
import subprocess
import sys

import pytest

from llm_jax import cli
from tests.conftest import REPO


def llm_jax(*args, timeout=300, **env):
  env = dict(os.environ, PYTHONUNBUFFERED='1', **env)
  return subprocess.run(
    [sys.executable, '-m', 'llm_jax', *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def in_repo(argv):
  """`llm-jax ARGV` in this process, from the repository root as a user would run it."""
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    return cli.main(['llm-jax', *argv])
  finally:
    os.chdir(cwd)


@pytest.mark.slow
def test_train_end_to_end_in_a_subprocess_then_sample_and_evaluate(tmp_path, capsys):
  workdir = tmp_path / 'run'
  args = ['train', '--config', 'configs/gpt_tiny.py', '--workdir', str(workdir)]
  args += ['--config.train.steps=40', '--config.eval.every_steps=20']
  result = llm_jax(*args, '--config.sample.max_new_tokens=80', '--config.sample.prompt=ROMEO:')
  assert result.returncode == 0, result.stderr
  assert '--- sample ---\nROMEO:' in result.stdout
  assert 'final eval_loss' in result.stdout
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'eval_loss' in r] == [20, 40]
  assert json.loads((workdir / 'config.json').read_text())['train']['steps'] == 40
  # The same command again resumes from the final checkpoint: evaluates, trains no more.
  again = llm_jax(*args)
  assert again.returncode == 0, again.stderr
  assert 'resumed from' in again.stdout and 'final eval_loss' in again.stdout
  assert len((workdir / 'metrics.jsonl').read_text().splitlines()) == len(rows)

  sample = ['sample', '--workdir', str(workdir), '--prompt', 'To be', '--num_samples', '2']
  assert in_repo([*sample, '--max_new_tokens', '20']) == 0
  out = capsys.readouterr().out
  assert out.count('--- sample') == 2 and out.count('\nTo be') == 2
  assert in_repo(['eval', '--workdir', str(workdir), '--json', str(tmp_path / 'eval.json')]) == 0
  assert 'eval_perplexity' in capsys.readouterr().out
  result = json.loads((tmp_path / 'eval.json').read_text())
  assert result['step'] == 40
  assert result['eval_loss'] == pytest.approx(rows[-1]['eval_loss'], rel=1e-5)  # same batches
  assert result['eval_perplexity'] == pytest.approx(math.exp(result['eval_loss']))
  assert result['eval_bits_per_byte'] == result['eval_bits_per_char']  # ASCII text
  # A character per token, but EOS predictions are scored with no text of their own.
  assert result['eval_bits_per_char'] > result['eval_loss'] / math.log(2)


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
  code = in_repo(
    ['train', '--config', 'configs/gpt_tiny.py', '--workdir', str(tmp_path / 'w')] + args
  )
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


def test_prepare_then_train_on_the_shards(tmp_path, capsys):
  from tests.test_prepare import DOCS

  (tmp_path / 'corpus.txt').write_text('\n\n'.join(DOCS * 5))
  out = tmp_path / 'bpe'
  prepare = ['prepare', f'--source=text:{tmp_path}/corpus.txt', f'--out={out}']
  assert in_repo(prepare + ['--tokenizer=bpe', '--vocab_size=300']) == 0
  assert 'bpe tokenizer with 300 ids' in capsys.readouterr().out
  train = ['train', '--config', 'configs/gpt_tiny.py', '--workdir', str(tmp_path / 'run')]
  train += [f'--config.data.path={out}', '--config.data.segment_ids=True']
  train += [
    '--config.train.steps=20',
    '--config.train.log_every=10',
    '--config.wandb.mode=disabled',
  ]
  assert in_repo(train + ['--config.sample.max_new_tokens=20']) == 0
  captured = capsys.readouterr().out
  assert f'lm on {out}: ' in captured and 'bpe tokenizer (300 ids)' in captured
  assert 'final eval_loss' in captured
  assert (tmp_path / 'run' / 'tokenizer.json').read_text() == (out / 'tokenizer.json').read_text()


def test_prepare_names_a_missing_file(tmp_path, capsys):
  code = in_repo(['prepare', '--source=text:nowhere/corpus.txt', f'--out={tmp_path}'])
  err = capsys.readouterr().err.strip()
  assert code == 2 and err.count('\n') == 0
  missing = 'data.source=text:nowhere/corpus.txt: no file matches nowhere/corpus.txt'
  assert err == f'llm-jax prepare: error: {missing}'
  code = in_repo(['train', '--config', 'configs/gpt_tiny.py', '--workdir', str(tmp_path / 'w'),
                  f'--config.data.path={tmp_path}/none'])  # fmt: skip
  err = capsys.readouterr().err.strip()
  assert code == 2 and 'none: no manifest.json there' in err and err.count('\n') == 0


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A finished 6-step gpt_tiny run on the embedded corpus (char tokenizer, 80 ids)."""
  from llm_jax.train import loop
  from tests.conftest import tiny_config

  workdir = tmp_path_factory.mktemp('run')
  loop.train(tiny_config(steps=6, log_every=3), workdir)
  return workdir


@pytest.mark.parametrize(
  'flags, message',
  [
    (['--top_k', '1000'], '--top_k=1000 is more than the 80 ids of the tokenizer'),
    (['--top_k', '-3'], '--top_k=-3 must be >= 0 (0: all ids)'),
    (['--top_p', '0'], '--top_p=0.0 must be in (0, 1] (1: all ids)'),
    (['--temperature', '-1'], '--temperature=-1.0 must be >= 0 (0: greedy)'),
  ],
)
def test_bad_sampling_flags_are_one_line_before_anything_loads(run_dir, flags, message, capsys):
  assert in_repo(['sample', '--workdir', str(run_dir), *flags]) == 2
  err = capsys.readouterr().err.strip()
  assert err == f'llm-jax sample: error: {message}'


def test_a_configs_top_k_is_checked_before_training(tmp_path, capsys):
  args = ['train', '--config', 'configs/gpt_tiny.py', '--workdir', str(tmp_path / 'w')]
  assert in_repo(args + ['--config.sample.top_k=1000']) == 2
  err = capsys.readouterr().err.strip()
  assert err == 'llm-jax train: error: sample.top_k=1000 is more than the 80 ids of the tokenizer'
  assert not (tmp_path / 'w' / 'checkpoints').exists()  # nothing trained, nothing saved


def test_export_into_a_directory_holding_that_step_needs_force(run_dir, tmp_path, capsys):
  export = ['export', '--workdir', str(run_dir), '--out', str(tmp_path / 'out')]
  assert in_repo(export) == 0
  first = sorted(p.name for p in (tmp_path / 'out' / 'checkpoints').iterdir())
  capsys.readouterr()
  assert in_repo(export) == 2
  err = capsys.readouterr().err.strip()
  assert err.count('\n') == 0 and 'already holds step 6' in err and '--force' in err
  assert in_repo([*export, '--force']) == 0
  assert sorted(p.name for p in (tmp_path / 'out' / 'checkpoints').iterdir()) == first == ['6']


@pytest.mark.slow
def test_eval_runs_on_a_host_with_other_devices_than_training(run_dir):
  """Trained on 8 devices with batches of 16; evaluated where 3 devices divide neither."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=3')
  result = subprocess.run(
    [sys.executable, '-m', 'llm_jax', 'eval', '--workdir', str(run_dir)],
    cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert 'step                 6' in result.stdout and 'eval_perplexity' in result.stdout


@pytest.mark.slow
def test_a_smoke_run_of_a_shipped_config_cuts_its_warmup_to_the_run(tmp_path):
  result = llm_jax(
    'train', '--config', 'configs/gpt_shakespeare.py:cpu', '--workdir', str(tmp_path),
    '--config.train.steps=10', '--config.wandb.mode=disabled', '--config.eval.batches=2',
    XLA_FLAGS='',  # the CPU recipe's one device
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  note = 'optimizer.warmup_steps=100 is longer than train.steps=10: warming up over all 10 steps'
  assert [line for line in result.stderr.splitlines() if 'warmup' in line] == [
    f'WARNING:root:{note}'
  ]
  assert json.loads((tmp_path / 'config.json').read_text())['optimizer']['warmup_steps'] == 10


def test_no_command_prints_plugin_noise_on_a_machine_without_the_hardware(tmp_path):
  """The test extra installs JAX's CUDA plugin and libtpu; this machine has neither a GPU nor a
  TPU, and JAX_PLATFORMS is left unset as a user would."""
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  for args in (
    ['train', '--config', 'configs/gpt_tiny.py', '--dry_run'],
    ['train', '--config', 'configs/gpt_tiny.py', '--dry_run', '--topology=h100'],
  ):
    result = subprocess.run(
      [sys.executable, '-m', 'llm_jax', *args], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for noise in ('Traceback', 'cuFFT', 'TPU', 'libtpu', 'plugin'):
      assert noise not in result.stderr, result.stderr
