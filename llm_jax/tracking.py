"""One metrics writer fanning out to WORKDIR/metrics.jsonl, Weights & Biases and the console.

`metrics.jsonl` is the local source of truth (one JSON object per line, always with `step`);
W&B is best effort: any failure to start or log becomes one warning and training goes on.
"""

import json
import logging
import pathlib
import sys

import tqdm

METRICS_FILE = 'metrics.jsonl'


def _start_wandb(wandb_cfg, workdir: pathlib.Path, config: dict):
  try:
    import wandb

    return wandb.init(
      mode=wandb_cfg.mode,
      project=wandb_cfg.project,
      entity=wandb_cfg.entity or None,
      group=wandb_cfg.group or None,
      name=wandb_cfg.name or workdir.name,
      dir=str(workdir),
      config=config,
      settings=wandb.Settings(silent=True),
    )
  except Exception as e:  # noqa: BLE001 -- tracking must never stop training
    logging.warning('W&B disabled for this run: %s', e)
    return None


def drop_rows_after(workdir: pathlib.Path, step: int) -> None:
  """Removes rows logged after `step`: a run restored to `step` logs those steps again."""
  path = workdir / METRICS_FILE
  if not path.exists():
    return
  lines = path.read_text(encoding='utf-8').splitlines(keepends=True)
  kept = [line for line in lines if line.strip() and json.loads(line)['step'] <= step]
  if len(kept) != len(lines):
    path.write_text(''.join(kept), encoding='utf-8')


class Tracker:
  """Writes metric rows and drives the progress bar; a no-op on processes other than 0."""

  def __init__(self, workdir: pathlib.Path, cfg, *, total_steps: int, active: bool = True):
    self.active = active
    self._file = open(workdir / METRICS_FILE, 'a', encoding='utf-8') if active else None
    self._wandb = None
    if active and cfg.wandb.mode != 'disabled':
      self._wandb = _start_wandb(cfg.wandb, workdir, cfg.to_dict())
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

  def summary(self, **values) -> None:
    if self._wandb is not None:
      self._wandb.summary.update(values)

  def close(self) -> None:
    if not self.active:
      return
    self._bar.close()
    self._file.close()
    if self._wandb is not None:
      self._wandb.finish()
