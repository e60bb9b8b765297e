"""Bucket workdirs, against a fake gs:// filesystem that keeps its objects in a local directory."""

import json

import fsspec
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.local import LocalFileSystem

from llm_jax import compare, config, data, rundir, storage
from llm_jax.train import loop
from tests.conftest import tiny_config


class FakeGCS(LocalFileSystem):
  """gs://BUCKET/KEY stored at ROOT/BUCKET/KEY."""

  protocol = ('gs', 'gcs')
  ROOT = ''

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for scheme in ('gs://', 'gcs://'):
      if path.startswith(scheme):
        path = f'{cls.ROOT}/{path[len(scheme) :]}'
    return super()._strip_protocol(path)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The local directory behind the fake gs:// buckets."""
  root = tmp_path / 'gcs'
  root.mkdir()
  monkeypatch.setattr(FakeGCS, 'ROOT', str(root))
  for name in FakeGCS.protocol:
    fsspec.register_implementation(name, FakeGCS, clobber=True)
  type(epath_backend.fsspec_backend)._get_filesystem.cache_clear()
  yield root
  type(epath_backend.fsspec_backend)._get_filesystem.cache_clear()


def test_a_bucket_append_file_rewrites_the_whole_object(bucket):
  url = 'gs://b/run/metrics.jsonl'
  storage.path('gs://b/run').mkdir(parents=True, exist_ok=True)
  first = storage.AppendFile(url)
  first.write('a\n')
  first.flush()
  assert (bucket / 'b/run/metrics.jsonl').read_text() == 'a\n'
  first.write('b\n')
  first.close()
  second = storage.AppendFile(url)  # a resumed run continues the same object
  second.write('c\n')
  second.close()
  assert (bucket / 'b/run/metrics.jsonl').read_text() == 'a\nb\nc\n'


def test_local_dir_of_a_bucket_workdir_is_unique_per_url(tmp_path, monkeypatch):
  monkeypatch.setenv(storage.LOCAL_ROOT_ENV, str(tmp_path))
  assert storage.local_dir(tmp_path / 'run') == tmp_path / 'run'
  a, b = storage.local_dir('gs://x/sweep/run'), storage.local_dir('gs://y/sweep/run')
  assert a.parent == tmp_path and a.name.startswith('run-') and a != b
  assert storage.local_dir('gs://x/sweep/run/') == a


def test_a_prepared_data_path_in_a_bucket_is_refused():
  cfg = config.preset('gpt_tiny')
  cfg.data.path = 'gs://b/prepared'
  with pytest.raises(config.ConfigError, match=r'data.path=gs://b/prepared: .* local disk'):
    data.validate(cfg.data)


@pytest.mark.slow
def test_a_run_in_a_bucket_writes_its_files_there_and_resumes(bucket, tmp_path, monkeypatch):
  # Checkpoints go through tensorstore's own GCS driver, which cannot be faked offline: they stay
  # local here. Everything else the run keeps goes to the fake bucket.
  local_ckpts = tmp_path / 'ckpts'
  monkeypatch.setattr(rundir, 'checkpoints', lambda workdir: local_ckpts)
  url = 'gs://b/runs/tiny'
  cfg = tiny_config(steps=20)
  loop.train(cfg, url)
  cfg.train.steps = 30
  loop.train(cfg, url)

  run = bucket / 'b/runs/tiny'
  assert {'config.json', 'tokenizer.json', 'metrics.jsonl', 'run.json'} <= {
    p.name for p in run.iterdir()
  }
  assert json.loads((run / 'config.json').read_text())['train']['steps'] == 30
  rows = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'loss' in r] == [10, 20, 30]  # none replayed twice
  assert sorted(p.name for p in local_ckpts.iterdir()) == ['20', '30']
  assert compare.load_workdir(url).rows == rows
