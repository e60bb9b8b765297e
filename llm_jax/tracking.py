"""One metrics writer fanning out to WORKDIR/metrics.jsonl, Weights & Biases and the console.

`metrics.jsonl` is the run's own record (one JSON object per line, always with `step`);
`run.json` holds the run's facts (devices, mesh, versions, commit, size). W&B is best effort: any
failure to start or log becomes one warning and training goes on. A resumed run continues the same
W&B run (its id is kept in the workdir; for a bucket workdir W&B's own files stay on local disk).
The API key only ever comes from the environment (WANDB_API_KEY or `wandb login`), never from a
config, so it never lands in a log or checkpoint.
"""

import json
import logging
import pathlib
import sys
import uuid

import tqdm
from etils import epath

from llm_jax import rundir, storage

FACTS_FILE = 'run.json'
WANDB_ID_FILE = 'wandb_run_id'


def _run_id(workdir) -> str:
  """This workdir's W&B run id: made once, then reused so a resumed run continues it."""
  path = workdir / WANDB_ID_FILE
  if path.exists():
    return path.read_text().strip()
  run_id = uuid.uuid4().hex[:12]
  path.write_text(run_id + '\n')
  return run_id


def _wandb_dir(workdir: epath.Path) -> pathlib.Path:
  """W&B's files: in the workdir, or on local disk for a bucket workdir (wandb sync reads files)."""
  directory = storage.local_dir(workdir)
  directory.mkdir(parents=True, exist_ok=True)
  return directory


def _start_wandb(wandb_cfg, workdir: epath.Path, config: dict):
  try:
    import wandb

    return wandb.init(
      mode=wandb_cfg.mode,
      project=wandb_cfg.project,
      entity=wandb_cfg.entity or None,
      group=wandb_cfg.group or None,
      tags=list(wandb_cfg.tags) or None,
      notes=wandb_cfg.notes or None,
      name=wandb_cfg.name or workdir.name,
      id=_run_id(workdir),
      resume='allow',
      dir=str(_wandb_dir(workdir)),
      config=config,
      settings=wandb.Settings(silent=True, init_timeout=wandb_cfg.init_timeout_s),
    )
  except Exception as e:  # noqa: BLE001 -- tracking must never stop training
    logging.warning('W&B disabled for this run: %s', str(e).splitlines()[0] if str(e) else e)
    return None


def _start_tensorboard(workdir: epath.Path):
  """A TensorBoard event writer in WORKDIR/tensorboard (`pip install 'llm_jax[tensorboard]'`)."""
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    logging.warning("TensorBoard output needs tensorboardX: pip install 'llm_jax[tensorboard]'")
    return None
  return SummaryWriter(str(rundir.path(workdir, rundir.TENSORBOARD)))


def drop_rows_after(workdir: epath.Path, step: int) -> None:
  """Removes rows logged after `step`: a run restored to `step` logs those steps again. The file
  is replaced whole, so a crash in between leaves the old rows, never a part of them."""
  path = rundir.path(workdir, rundir.METRICS)
  if not path.exists():
    return
  lines = path.read_text(encoding='utf-8').splitlines(keepends=True)
  kept = [line for line in lines if line.strip() and json.loads(line)['step'] <= step]
  if len(kept) != len(lines):
    storage.write_atomic(path, ''.join(kept))


class Tracker:
  """Writes metric rows and drives the progress bar; a no-op on processes other than 0."""

  def __init__(self, workdir: epath.Path, cfg, *, total_steps: int, active: bool = True):
    self.active = active
    self._workdir = workdir
    self._file = storage.AppendFile(rundir.path(workdir, rundir.METRICS)) if active else None
    self._wandb = None
    if active and cfg.wandb.mode != 'disabled':
      self._wandb = _start_wandb(cfg.wandb, workdir, cfg.to_dict())
    self._tensorboard = _start_tensorboard(workdir) if active and cfg.tensorboard.enabled else None
    self._bar = tqdm.tqdm(
      total=total_steps,
      disable=not active,
      dynamic_ncols=True,
      file=sys.stderr,
      unit='step',
      mininterval=1.0,
    )

  def log(self, step: int, **metrics) -> None:
    """Append one row {step, **metrics} everywhere; float-valued metrics only."""
    if not self.active:
      return
    row = {'step': int(step), **{k: (None if v is None else float(v)) for k, v in metrics.items()}}
    self._file.write(json.dumps(row) + '\n')
    self._file.flush()
    if self._wandb is not None:
      try:
        self._wandb.log({k: v for k, v in metrics.items() if v is not None}, step=int(step))
      except Exception as e:  # noqa: BLE001
        logging.warning('W&B logging failed, continuing without it: %s', e)
        self._wandb = None
    if self._tensorboard is not None:
      for key, value in metrics.items():
        if value is not None:
          self._tensorboard.add_scalar(key, float(value), int(step))
    shown = {
      k: f'{v:.4g}' for k, v in metrics.items() if k in ('loss', 'eval_loss', 'tokens_per_sec')
    }
    if shown:
      self._bar.set_postfix(shown, refresh=False)

  def advance(self, steps: int) -> None:
    self._bar.update(steps)

  def print(self, text: str) -> None:
    """Console output that does not tear the progress bar."""
    if self.active:
      self._bar.write(text, file=sys.stdout)

  def facts(self, **facts) -> None:
    """The run's facts, to `run.json` and the W&B run's config (under `facts`)."""
    if not self.active:
      return
    (self._workdir / FACTS_FILE).write_text(json.dumps(facts, indent=2) + '\n')
    if self._wandb is not None:
      try:
        self._wandb.config.update({'facts': facts}, allow_val_change=True)
      except Exception as e:  # noqa: BLE001
        logging.warning('W&B could not record the run facts: %s', e)

  def summary(self, **values) -> None:
    """Final values (metrics, the sample text) as the W&B run's summary."""
    if self._wandb is not None:
      try:
        self._wandb.summary.update(values)
      except Exception as e:  # noqa: BLE001
        logging.warning('W&B could not record the summary: %s', e)

  def close(self) -> None:
    if not self.active:
      return
    self._bar.close()
    self._file.close()
    if self._tensorboard is not None:
      self._tensorboard.close()
    if self._wandb is not None:
      self._wandb.finish()
