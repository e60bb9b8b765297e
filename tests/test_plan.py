import os
import re

import pytest

from llm_jax import cli, topology
from llm_jax.errors import ConfigError
from llm_jax.train import plan
from llm_jax.train import trainer as trainer_lib
from tests.conftest import REPO, needs_libtpu, tiny_config


def test_dry_run_reports_memory_and_shardings_without_allocating(capsys, tmp_path):
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    argv = ['llm-jax', 'train', '--config', 'configs/gpt_tiny.py', '--dry_run']
    code = cli.main(
      argv + ['--config.mesh.data=1', '--config.mesh.fsdp=4', '--config.mesh.tensor=2']
    )
  finally:
    os.chdir(cwd)
  out = capsys.readouterr().out
  assert code == 0
  assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 2}" in out
  assert re.search(r"blocks/\*/mlp/fc/kernel +\(64, 256\) P\('fsdp', 'tensor'\)", out)
  assert re.search(r"wte/embedding +\(128, 64\) P\('tensor', 'fsdp'\)", out)  # padded vocab
  assert 'optimizer state' in out and 'temporaries' in out


def test_plan_counts_what_one_device_holds():
  cfg = tiny_config()
  cfg.mesh.update(data=1, fsdp=8)
  trainer = trainer_lib.Trainer(cfg, workdir=None)
  assert trainer.state is None  # planning allocates no state
  p = plan.memory_plan(trainer)
  n_params = sum(x.size for x in __import__('jax').tree.leaves(trainer.steps.abstract.params))
  assert p['params'] == pytest.approx(n_params * 4 / 8, rel=0.1)  # fp32, sharded 8 ways
  assert p['opt_state'] == pytest.approx(2 * p['params'], rel=0.01)  # Adam's mu and nu
  assert p['total'] >= p['params'] + p['opt_state']


def test_a_plan_that_does_not_fit_names_what_to_change():
  p = dict(params=3 * 2**30, opt_state=6 * 2**30, temporaries=10 * 2**30, total=20 * 2**30,
           capacity=16 * 2**30)  # fmt: skip
  with pytest.raises(
    ConfigError, match='needs 20.00 GiB per device but a device holds 16.00 GiB: raise mesh.fsdp'
  ):
    plan.check_fits(p)
  plan.check_fits(dict(p, capacity=None))  # unknown capacity (CPU): nothing to check
  plan.check_fits(dict(p, capacity=32 * 2**30))


@needs_libtpu
def test_a_described_tpu_slice_compiles_splash_attention_to_its_tpu_kernel():
  """No TPU here: libtpu's compiler builds the step for a v5e 2×2 slice that is only described."""
  cfg = tiny_config()
  cfg.model.update(block_size=128, attention='splash')
  cfg.data.seq_len = 128
  cfg.mesh.update(data=2, tensor=2)
  trainer = trainer_lib.Trainer(cfg, workdir=None, devices=topology.devices('v5e:2x2'))
  p = plan.memory_plan(trainer)
  assert trainer.mesh.devices.flat[0].device_kind == 'TPU v5 lite' and trainer.mesh.size == 4
  assert 'tpu_custom_call' in trainer.train_step.as_text()  # the Pallas kernel, not interpreted
  assert p['capacity'] is None and p['temporaries'] > 0  # the TPU compiler checked the fit
  assert 'the chip (its compiler checked that it fits)' in plan.format_plan(p, trainer)
  assert len(topology.devices('v4:2x2x1')) == 4  # one device per chip, as on a TPU VM


@needs_libtpu
def test_two_described_slices_put_the_dcn_axis_across_them(capsys):
  argv = ['llm-jax', 'train', '--config', str(REPO / 'configs/gpt_tiny.py'), '--dry_run']
  mesh = ['--config.mesh.data=2', '--config.mesh.dcn_data=2', '--config.mesh.fsdp=4']
  assert cli.main(argv + ['--topology=v5e:2x2', '--topology_slices=2', *mesh]) == 0
  assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1} over 8 TPU v5 lite" in capsys.readouterr().out
  cfg = tiny_config()
  cfg.mesh.update(data=2, dcn_data=2, fsdp=4)
  trainer = trainer_lib.Trainer(cfg, workdir=None, devices=topology.devices('v5e:2x2', slices=2))
  slices = [{d.slice_index for d in row.flat} for row in trainer.mesh.devices]
  assert slices == [{0}, {1}]  # only the data axis crosses slices; fsdp stays within one


@needs_libtpu
@pytest.mark.parametrize(
  'args, message',
  [
    (
      ['--topology=v5e:2x2', '--config.train.batch_size=262144', '--config.model.n_embd=256'],
      r'the train step does not fit: RESOURCE_EXHAUSTED: .* exceeds available HBM .*; raise'
      ' mesh.fsdp',
    ),
    (['--topology=v9:2x2'], '--topology=v9:2x2: .*Invalid TPU external name'),
  ],
)
def test_a_tpu_plan_that_cannot_work_is_one_line(capsys, args, message):
  code = cli.main(
    ['llm-jax', 'train', '--config', str(REPO / 'configs/gpt_tiny.py'), '--dry_run', *args]
  )
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert code != 0 and re.search(message, err), err


def test_topology_is_for_dry_runs(capsys, tmp_path):
  argv = ['llm-jax', 'train', '--config', str(REPO / 'configs/gpt_tiny.py'), '--topology=v5e:2x2']
  assert cli.main(argv + ['--workdir', str(tmp_path)]) != 0
  assert '--topology plans a run: use it with --dry_run' in capsys.readouterr().err
