import json

from llm_jax import tracking
from tests.conftest import tiny_config


def test_jsonl_rows_append_and_wandb_disabled_writes_nothing(tmp_path):
  cfg = tiny_config()
  for run in range(2):  # a second tracker on the same workdir appends, as a resumed run does
    tracker = tracking.Tracker(tmp_path, cfg, total_steps=10)
    tracker.log(5 + run, loss=2.5, mfu=None)
    tracker.close()
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert rows == [{'step': 5, 'loss': 2.5, 'mfu': None}, {'step': 6, 'loss': 2.5, 'mfu': None}]
  assert not (tmp_path / 'wandb').exists()


def test_wandb_offline_writes_a_local_run(tmp_path):
  cfg = tiny_config()
  cfg.wandb.mode = 'offline'
  tracker = tracking.Tracker(tmp_path, cfg, total_steps=10)
  tracker.log(1, loss=3.0)
  tracker.summary(eval_loss=2.0)
  tracker.close()
  runs = list((tmp_path / 'wandb').glob('offline-run-*/run-*.wandb'))
  assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_inactive_tracker_writes_nothing(tmp_path):
  tracker = tracking.Tracker(tmp_path, tiny_config(), total_steps=10, active=False)
  tracker.log(1, loss=3.0)
  tracker.close()
  assert not (tmp_path / 'metrics.jsonl').exists()
