import json
import os
import shutil
import subprocess
import textwrap

import pytest

from llm_jax import launch
from tests.conftest import REPO

EXPERIMENTS = sorted((REPO / 'experiments').glob('*.py'))


def write_experiment(tmp_path, body: str):
  path = tmp_path / 'exp.py'
  path.write_text('from llm_jax.launch import Experiment\n\n\ndef get_experiment():\n'
                  + textwrap.indent(textwrap.dedent(body), '  '))  # fmt: skip
  return path


def run_launch(path, *args, env=None):
  out = subprocess.run(
    ['python', '-m', 'llm_jax', 'launch', str(path), *args],
    cwd=REPO,
    env=dict(os.environ, **(env or {})),
    capture_output=True,
    text=True,
    timeout=300,
  )
  return out


def test_sweeps_expand_to_unique_named_runs_with_their_overrides():
  exp = launch.Experiment(
    name='e', config='configs/gpt_tiny.py', overrides={'train.steps': 7},
    sweep={'optimizer.lr': [1e-3, 3e-3], 'train.seed': [0, 1]},
  )  # fmt: skip
  runs = launch.expand(exp)
  assert [r.name for r in runs] == ['e-lr=0.001-seed=0', 'e-lr=0.001-seed=1', 'e-lr=0.003-seed=0',
                                    'e-lr=0.003-seed=1']  # fmt: skip
  assert runs[3].overrides['optimizer.lr'] == 3e-3 and runs[3].overrides['train.steps'] == 7
  assert runs[3].workdir == 'runs/e-lr=0.003-seed=1' and runs[3].overrides['wandb.group'] == 'e'
  zipped = launch.expand(launch.Experiment(**{**exp.__dict__, 'zip_sweep': True}))
  assert [r.name for r in zipped] == ['e-lr=0.001-seed=0', 'e-lr=0.003-seed=1']
  launch.check(exp, runs)


@pytest.mark.parametrize(
  'change, message',
  [
    (dict(overrides={'optimizer.lrr': 1.0}), 'unknown config key: optimizer.lrr'),
    (dict(overrides={'train.steps': 'many'}), "train.steps='many'"),
    (dict(sweep={'a.b': [1, 2], 'c.d': [1]}, zip_sweep=True), 'zipped sweep lists differ'),
    (dict(sweep={'train.seed': [1, 1]}), 'duplicate run names'),
  ],
)
def test_a_bad_experiment_is_one_error_naming_the_field(change, message):
  exp = launch.Experiment(**dict(dict(name='e', config='configs/gpt_tiny.py'), **change))
  with pytest.raises(launch.LaunchError, match=message):
    launch.check(exp, launch.expand(exp))


@pytest.mark.parametrize('path', EXPERIMENTS, ids=lambda p: p.name)
def test_every_shipped_experiment_expands_and_checks(path):
  exp = launch.load(path)
  launch.check(exp, launch.expand(exp))


def test_dry_runs_print_the_commands_of_each_target():
  sweep = REPO / 'experiments' / 'shakespeare_lr_sweep.py'
  local = run_launch(sweep, '--dry_run')
  assert local.returncode == 0, local.stderr
  lines = local.stdout.splitlines()
  assert len(lines) == 3 and all(line.startswith('llm-jax train --config') for line in lines)
  assert '--config.optimizer.lr=0.003' in lines[2]
  slurm = run_launch(sweep, '--target=slurm', '--dry_run', '--only=shakespeare_lr-lr=0.001')
  assert '#SBATCH --gpus-per-node=1' in slurm.stdout and 'srun llm-jax train' in slurm.stdout
  assert slurm.stdout.rstrip().endswith('sbatch slurm_jobs/shakespeare_lr-lr=0.001.sbatch')
  assert not (REPO / 'slurm_jobs').exists()  # a dry run writes nothing
  tpu = run_launch(sweep, '--target=tpu', '--dry_run', '--only=shakespeare_lr-lr=0.003')
  gcloud = [line for line in tpu.stdout.splitlines() if line.startswith('+ gcloud')]
  assert gcloud[0].startswith('+ gcloud compute tpus tpu-vm create shakespeare-lr-2')
  assert '--accelerator-type=v4-8' in gcloud[0] and '--spot' in gcloud[0]
  assert 'git\\ checkout' in gcloud[1] and 'nohup\\ llm-jax\\ train' in gcloud[2]


def test_tpu_scripts_drive_gcloud(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'gcloud.log'
  (bin_dir / 'gcloud').write_text(
    '#!/usr/bin/env python3\nimport json, sys\n'
    f'open({str(log)!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")\n'
  )
  (bin_dir / 'gcloud').chmod(0o755)
  env = {'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'PROJECT': 'proj'}
  exp = REPO / 'experiments' / 'gpt2_350m_fsdp_tpu.py'
  result = run_launch(exp, env=env)
  assert result.returncode == 0, result.stderr
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  assert calls[0][:5] == ['compute', 'tpus', 'tpu-vm', 'create', 'gpt2-350m-fsdp']
  assert '--accelerator-type=v4-32' in calls[0] and '--spot' in calls[0]
  assert '--project=proj' in calls[0]
  ssh = [c for c in calls if c[:4] == ['compute', 'tpus', 'tpu-vm', 'ssh']]
  assert len(ssh) == 3 and all('--worker=all' in c for c in ssh)
  assert 'gcloud storage cp -r gs://YOUR_BUCKET/data/owt data/' in ssh[1][-1]
  assert 'nohup llm-jax train --config configs/gpt2.py:350m' in ssh[2][-1]
  queued = dict(os.environ, **env, QUEUED='1', TPU_NAME='q')
  for script in ('create.sh', 'tail.sh', 'stop.sh', 'delete.sh'):
    args = ['gpt2_350m_fsdp'] if script == 'tail.sh' else []
    subprocess.run(['bash', REPO / 'tpu_scripts' / script, *args], env=queued, check=True,
                   capture_output=True)  # fmt: skip
  calls = [json.loads(line) for line in log.read_text().splitlines()][-4:]
  assert calls[0][:5] == ['compute', 'tpus', 'queued-resources', 'create', 'q']
  assert '--worker=0' in calls[1] and 'tail -n 100 -F' in calls[1][-1]
  assert "pkill -TERM -f 'llm-jax train'" in calls[2][-1]
  assert calls[3][:5] == ['compute', 'tpus', 'queued-resources', 'delete', 'q']


@pytest.mark.skipif(shutil.which('shellcheck') is None, reason='shellcheck is not installed')
def test_tpu_scripts_are_shellcheck_clean():
  scripts = sorted(str(p) for p in (REPO / 'tpu_scripts').glob('*.sh'))
  result = subprocess.run(['shellcheck', '-S', 'warning', *scripts], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_a_local_launch_trains_every_run_of_the_sweep(tmp_path):
  path = write_experiment(
    tmp_path,
    f"""
    return Experiment(
      name='tiny', config='configs/gpt_tiny.py', sweep={{'optimizer.lr': [1e-3, 3e-3]}},
      workdir_root={str(tmp_path / 'runs')!r},
      overrides={{'train.steps': 10, 'eval.every_steps': 0, 'sample.max_new_tokens': 0,
                 'wandb.mode': 'disabled', 'optimizer.warmup_steps': 2}},
    )
  """,
  )
  result = run_launch(path)
  assert result.returncode == 0, result.stderr
  for lr in ('0.001', '0.003'):
    workdir = tmp_path / 'runs' / f'tiny-lr={lr}'
    saved = json.loads((workdir / 'config.json').read_text())
    assert saved['optimizer']['lr'] == float(lr) and saved['wandb']['group'] == 'tiny'
    rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    assert rows[-1]['step'] == 10
