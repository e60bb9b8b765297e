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


def test_offline_run_holds_config_and_metrics_and_a_resumed_run_continues_it(tmp_path):
  cfg = tiny_config()
  cfg.wandb.update(mode='offline', tags=('baseline',), notes='first try')
  for step in (1, 2):  # the second tracker is a resumed run on the same workdir
    tracker = tracking.Tracker(tmp_path, cfg, total_steps=10)
    tracker.log(step, loss=3.0 - step)
    tracker.facts(parameters=123)
    tracker.close()
  run_id = (tmp_path / tracking.WANDB_ID_FILE).read_text().strip()
  files = sorted((tmp_path / 'wandb').glob('offline-run-*/run-*.wandb'))
  assert len(files) == 2 and all(f.name == f'run-{run_id}.wandb' for f in files)
  recorded = files[0].read_bytes()
  assert b'optimizer' in recorded and b'loss' in recorded and b'baseline' in recorded
  assert json.loads((tmp_path / tracking.FACTS_FILE).read_text()) == {'parameters': 123}


def test_unreachable_online_wandb_warns_once_and_training_goes_on(tmp_path, monkeypatch, caplog):
  monkeypatch.delenv('WANDB_API_KEY', raising=False)
  monkeypatch.setenv('WANDB_BASE_URL', 'http://127.0.0.1:9')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))  # no ~/.netrc key either
  cfg = tiny_config()
  cfg.wandb.update(mode='online', init_timeout_s=5)
  tracker = tracking.Tracker(tmp_path, cfg, total_steps=10)
  tracker.log(1, loss=3.0)
  tracker.close()
  warnings = [r for r in caplog.records if 'W&B disabled' in r.getMessage()]
  assert len(warnings) == 1 and '\n' not in warnings[0].getMessage()
  assert json.loads((tmp_path / 'metrics.jsonl').read_text()) == {'step': 1, 'loss': 3.0}


def test_the_api_key_from_the_environment_never_reaches_the_run_files(tmp_path, monkeypatch):
  monkeypatch.setenv('WANDB_API_KEY', 'k' * 30 + 'SECRET0123')
  cfg = tiny_config()
  cfg.wandb.mode = 'offline'
  tracker = tracking.Tracker(tmp_path, cfg, total_steps=10)
  tracker.log(1, loss=3.0)
  tracker.facts(parameters=1)
  tracker.close()
  written = [f for f in tmp_path.rglob('*') if f.is_file()]
  assert written and not [f for f in written if b'SECRET0123' in f.read_bytes()]


def test_tensorboard_events_when_enabled(tmp_path):
  from tensorboardX.proto import event_pb2

  cfg = tiny_config()
  cfg.tensorboard.enabled = True
  tracker = tracking.Tracker(tmp_path, cfg, total_steps=10)
  tracker.log(3, loss=2.5, mfu=None)
  tracker.close()
  (events,) = (tmp_path / 'tensorboard').glob('events.out.tfevents.*')
  data, scalars = events.read_bytes(), []
  while data:  # TFRecord framing: length (8), crc (4), payload, crc (4)
    n = int.from_bytes(data[:8], 'little')
    event = event_pb2.Event.FromString(data[12 : 12 + n])
    scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    data = data[16 + n :]
  assert scalars == [(3, 'loss', 2.5)]
