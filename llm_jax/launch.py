"""`llm-jax launch experiments/X.py --target=local|tpu|slurm [--dry_run] [--only=NAME]`.

An experiment file's `get_experiment()` returns an `Experiment`: a base config from `configs/`,
overrides, an optional sweep (the product of its lists, or zipped), a W&B project and group, and
per-target settings. The launcher expands the sweep into runs with unique names and workdirs,
checks every override against the config (a wrong key or value is one error line naming it), and
then runs them one after another here (`local`), on a Cloud TPU slice through `tpu_scripts/`
(`tpu`), or submits one SLURM job each (`slurm`). `--dry_run` prints every command and changes
nothing.
"""

import copy
import dataclasses
import importlib.util
import itertools
import pathlib
import re
import shlex
import subprocess
import sys

from llm_jax import config as config_lib
from llm_jax.errors import MissingFile, UserError

TARGETS = ('local', 'tpu', 'slurm')
REPO = pathlib.Path(__file__).resolve().parents[1]


class LaunchError(UserError, ValueError):
  """An experiment that cannot be launched; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class Experiment:
  name: str
  config: str  # 'configs/FILE.py[:ARG]', relative to the repository
  overrides: dict = dataclasses.field(default_factory=dict)  # {'train.steps': 100}
  sweep: dict = dataclasses.field(default_factory=dict)  # {'optimizer.lr': [1e-3, 3e-3]}
  zip_sweep: bool = False  # True: the i-th values of every list go together
  wandb_project: str = 'llm_jax'
  wandb_group: str = ''  # '' = the experiment's name
  target: str = 'local'
  workdir_root: str = 'runs'  # a local path or gs://bucket/path
  tpu: dict = dataclasses.field(default_factory=dict)  # accelerator, runtime, zone, spot, name
  slurm: dict = dataclasses.field(default_factory=dict)  # nodes, gpus_per_node, time, partition


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  workdir: str
  overrides: dict  # every --config.KEY=VALUE of this run


def load(path) -> Experiment:
  """The Experiment that `path`'s get_experiment() returns."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise MissingFile(f'experiment file not found: {path}')
  spec = importlib.util.spec_from_file_location(f'experiment_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_experiment'):
    raise LaunchError(f'{path}: defines no get_experiment()')
  exp = module.get_experiment()
  if exp.target not in TARGETS:
    raise LaunchError(f'{path}: target={exp.target!r} must be one of {", ".join(TARGETS)}')
  return exp


def _label(value) -> str:
  return re.sub(r'[^A-Za-z0-9.+-]+', '_', f'{value:g}' if isinstance(value, float) else str(value))


def points(exp: Experiment) -> list[dict]:
  """The sweep's points: {key: value} each; one empty point without a sweep."""
  keys = list(exp.sweep)
  lists = [list(exp.sweep[k]) for k in keys]
  if exp.zip_sweep:
    if len({len(v) for v in lists}) > 1:
      lengths = ', '.join(f'{k}: {len(v)}' for k, v in zip(keys, lists, strict=True))
      raise LaunchError(f'experiment {exp.name}: zipped sweep lists differ in length ({lengths})')
    combos = list(zip(*lists, strict=True))
  else:
    combos = list(itertools.product(*lists))
  return [dict(zip(keys, combo, strict=True)) for combo in combos]


def expand(exp: Experiment) -> list[Run]:
  """One Run per sweep point, named `EXPERIMENT-key=value-...` with a workdir under the root."""
  runs = []
  for point in points(exp):
    suffix = '-'.join(f'{k.rsplit(".", 1)[-1]}={_label(v)}' for k, v in point.items())
    name = f'{exp.name}-{suffix}' if suffix else exp.name
    overrides = {
      **exp.overrides,
      **point,
      'wandb.project': exp.wandb_project,
      'wandb.group': exp.wandb_group or exp.name,
      'wandb.name': name,
    }
    runs.append(Run(name, f'{exp.workdir_root.rstrip("/")}/{name}', overrides))
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise LaunchError(f'experiment {exp.name}: sweep values give duplicate run names')
  return runs


def check(exp: Experiment, runs: list[Run]) -> None:
  """LaunchError naming the first override that the base config does not have or accept."""
  try:
    base = config_lib.load_file(exp.config, REPO)
  except config_lib.ConfigError as e:
    raise LaunchError(f'experiment {exp.name}: {e}') from None
  for run in runs:
    cfg = copy.deepcopy(base)  # still locked and type-safe: each run's overrides on their own
    for key, value in run.overrides.items():
      *parents, leaf = key.split('.')
      node = cfg
      try:
        for part in parents:
          node = node[part]
        node[leaf] = value
      except (KeyError, AttributeError):
        raise LaunchError(f'experiment {exp.name}: unknown config key: {key}') from None
      except TypeError as e:
        raise LaunchError(f'experiment {exp.name}: {key}={value!r}: {e}') from None


def train_command(exp: Experiment, run: Run) -> list[str]:
  """The `llm-jax train` command line of one run."""
  args = ['llm-jax', 'train', '--config', exp.config, '--workdir', run.workdir]
  return args + [f'--config.{k}={v}' for k, v in run.overrides.items()]


def tpu_slices(exp: Experiment, runs: list[Run]) -> dict[str, str]:
  """{run name: TPU slice name}: each run of a sweep gets a slice of its own."""
  name = exp.tpu.get('name', exp.name.replace('_', '-'))
  if len(runs) == 1:
    return {runs[0].name: name}
  return {run.name: f'{name}-{i}' for i, run in enumerate(runs)}


def tpu_commands(exp: Experiment, run: Run, tpu_name: str, commit: str) -> list[list[str]]:
  """tpu_scripts calls that create the slice `tpu_name`, set up its workers at `commit`, and
  launch the run on all of them."""
  env = {
    'TPU_NAME': tpu_name,
    'ACCELERATOR': exp.tpu.get('accelerator', 'v4-8'),
    'RUNTIME': exp.tpu.get('runtime', 'tpu-ubuntu2204-base'),
    'ZONE': exp.tpu.get('zone', 'us-central2-b'),
    'SPOT': '1' if exp.tpu.get('spot') else '0',
    'QUEUED': '1' if exp.tpu.get('queued') else '0',
    'DATA_URL': exp.tpu.get('data_url', ''),
  }
  prefix = [f'{k}={v}' for k, v in env.items()]
  scripts = REPO / 'tpu_scripts'
  return [
    ['env', *prefix, 'bash', str(scripts / 'create.sh')],
    ['env', *prefix, 'bash', str(scripts / 'setup.sh'), commit],
    ['env', *prefix, 'bash', str(scripts / 'launch.sh'), run.name, '--', *train_command(exp, run)],
  ]


SBATCH = """#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --output={logs}/%x-%j.out
{partition}
# One process per node drives all of its GPUs; jax.distributed reads the coordinator, process
# count and process id from SLURM's environment (distributed.auto_detect).
set -euo pipefail
cd {repo}
srun {command}
"""


def sbatch_script(exp: Experiment, run: Run) -> str:
  s = exp.slurm
  return SBATCH.format(
    name=run.name,
    nodes=s.get('nodes', 1),
    gpus=s.get('gpus_per_node', 8),
    cpus=s.get('cpus_per_task', 32),
    time=s.get('time', '24:00:00'),
    logs=s.get('log_dir', 'slurm_logs'),
    partition=f'#SBATCH --partition={s["partition"]}' if s.get('partition') else '',
    repo=shlex.quote(str(REPO)),
    command=shlex.join(train_command(exp, run)),
  )


def _commit() -> str:
  out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True, text=True)
  return out.stdout.strip() or 'HEAD'


def launch(path, *, target: str | None, dry_run: bool, only: str | None, out=sys.stdout) -> int:
  """Expands and runs (or prints) the experiment in `path`; the exit status of the first
  failing run, or 0."""
  exp = load(path)
  target = target or exp.target
  if target not in TARGETS:
    raise LaunchError(f'--target={target!r} must be one of {", ".join(TARGETS)}')
  every_run = expand(exp)
  check(exp, every_run)
  runs = [r for r in every_run if r.name == only] if only else every_run
  if not runs:
    raise LaunchError(f'--only={only}: no run of that name in {exp.name}')
  if target == 'tpu':
    slices, commit = tpu_slices(exp, every_run), _commit()
  for run in runs:
    if target == 'local':
      commands = [train_command(exp, run)]
    elif target == 'tpu':
      # The scripts print their gcloud commands; with DRY_RUN=1 that is all they do.
      commands = tpu_commands(exp, run, slices[run.name], commit)
      commands = [[c[0], f'DRY_RUN={int(dry_run)}', *c[1:]] for c in commands]
    else:
      script = pathlib.Path(exp.slurm.get('script_dir', 'slurm_jobs')) / f'{run.name}.sbatch'
      if dry_run:
        print(f'# {script}\n{sbatch_script(exp, run)}', file=out)
      else:  # sbatch runs in the repository, like the job's script
        (REPO / script).parent.mkdir(parents=True, exist_ok=True)
        (REPO / script).write_text(sbatch_script(exp, run))
      commands = [['sbatch', str(script)]]
    for command in commands:
      print(shlex.join(command), file=out, flush=True)
      if dry_run and target != 'tpu':
        continue
      if target == 'local':
        command = [sys.executable, '-m', 'llm_jax', *command[1:]]
      result = subprocess.run(command, cwd=REPO, capture_output=target == 'tpu', text=True)
      if target == 'tpu':
        print(result.stdout + result.stderr, end='', file=out, flush=True)
      if result.returncode:
        return result.returncode
  return 0
