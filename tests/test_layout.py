"""The package's shape: import-linter contracts (pyproject.toml), configs that load without JAX,
and modules short enough to read in one sitting."""

import json
import subprocess
import sys

from tests.conftest import REPO

MAX_MODULE_LINES = 400
CONFIGS = sorted((REPO / 'configs').glob('*.py'))
EXPERIMENTS = sorted((REPO / 'experiments').glob('*.py'))
# Each config file's arguments beside the default (None).
CONFIG_ARGS = {
  'gpt_shakespeare.py': ['cpu'],
  'gpt2.py': ['350m', '774m', '1.5b'],
  'bert.py': ['cpu', 'large'],
  'bert_cls.py': ['cpu'],
}


def test_the_import_contracts_hold():
  lint = (
    'import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))'
  )
  result = subprocess.run(
    [sys.executable, '-c', lint], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


LOAD_WITHOUT_JAX = """
import contextlib, io, json, sys
from llm_jax import cli, config
specs = json.loads(sys.argv[1])
for spec in specs['configs']:
  config.load_file(spec)
for path in specs['experiments']:  # loads and checks each run's config, prints its commands
  with contextlib.redirect_stdout(io.StringIO()):
    assert cli.main(['llm-jax', 'launch', path, '--dry_run']) == 0
print(json.dumps(sorted(m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules)))
"""


def test_config_files_and_launch_dry_runs_never_import_jax():
  configs = [str(p) for p in CONFIGS]
  configs += [f'{p}:{arg}' for p in CONFIGS for arg in CONFIG_ARGS.get(p.name, [])]
  specs = dict(configs=configs, experiments=[str(p) for p in EXPERIMENTS])
  result = subprocess.run(
    [sys.executable, '-c', LOAD_WITHOUT_JAX, json.dumps(specs)],
    cwd=REPO, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout.splitlines()[-1]) == []


def test_no_module_is_over_400_lines():
  lengths = {
    str(p.relative_to(REPO)): len(p.read_text().splitlines())
    for p in (REPO / 'llm_jax').rglob('*.py')
  }
  assert {p: n for p, n in lengths.items() if n > MAX_MODULE_LINES} == {}
