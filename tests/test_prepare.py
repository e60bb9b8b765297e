import json

import numpy as np
import pytest

from llm_jax import data
from llm_jax.data import DataError, prepare, sources, tokens
from tests.test_sources import data_cfg

DOCS = [f'Document {i}: ' + 'word ' * (i % 7) + 'end.' for i in range(40)]


@pytest.fixture
def corpus_file(tmp_path):
  path = tmp_path / 'corpus.txt'
  path.write_text('\n\n'.join(DOCS) + '\n')
  return path


def expected_stream(tok, docs):
  return np.concatenate([np.append(tok.encode(d), tok.eos_id) for d in docs])


@pytest.mark.parametrize('tokenizer', ['char', 'bpe'])
def test_prepared_shards_hold_every_document_once_with_eos_between(
  tmp_path, corpus_file, tokenizer
):
  cfg = data_cfg(f'text:{corpus_file}', tokenizer=tokenizer, vocab_size=300, val_fraction=0.1)
  manifest = prepare.prepare(cfg, tmp_path / 'out', workers=1, progress=False, shard_tokens=100)
  prepared = tokens.open_prepared(tmp_path / 'out')
  tok = prepared.tokenizer
  assert manifest['tokenizer'] == {
    'kind': tokenizer,
    'vocab_size': tok.vocab_size,
    'eos_id': tok.eos_id,
  }
  assert manifest['dtype'] == 'uint16'
  train_docs = [d for i, d in enumerate(DOCS) if not sources.is_validation(i, 0.1)]
  val_docs = [d for i, d in enumerate(DOCS) if sources.is_validation(i, 0.1)]
  assert manifest['splits']['train']['documents'] == 36 and len(val_docs) == 4
  for split, docs in (('train', train_docs), ('validation', val_docs)):
    stream = prepared.splits[split]
    np.testing.assert_array_equal(stream.read(0, len(stream)), expected_stream(tok, docs))
  shards = manifest['splits']['train']['shards']
  assert len(shards) > 1 and all(s['tokens'] <= 100 for s in shards)


def test_parallel_workers_write_the_same_tokens(tmp_path, corpus_file, monkeypatch):
  monkeypatch.setattr(prepare, 'CHUNK_CHARS', 200)  # several chunks for two workers
  assert len(list(prepare.chunks(DOCS))) > 2
  cfg = data_cfg(f'text:{corpus_file}', tokenizer='byte')
  prepare.prepare(cfg, tmp_path / 'one', workers=1, progress=False)
  prepare.prepare(cfg, tmp_path / 'two', workers=2, progress=False)
  one, two = tokens.open_prepared(tmp_path / 'one'), tokens.open_prepared(tmp_path / 'two')
  for split in sources.SPLITS:
    a, b = one.splits[split], two.splits[split]
    np.testing.assert_array_equal(a.read(0, len(a)), b.read(0, len(b)))


def test_a_run_on_prepared_data_keeps_the_tokenizer_in_its_workdir(tmp_path, corpus_file):
  prepare.prepare(data_cfg(f'text:{corpus_file}'), tmp_path / 'a', workers=1, progress=False)
  run = tmp_path / 'run'
  run.mkdir()
  ds = data.load(data_cfg('shakespeare', path=str(tmp_path / 'a')), run)
  assert ds.tokenizer.spec() == data.tokenizer_lib.load(run / 'tokenizer.json').spec()
  other = data_cfg(f'text:{corpus_file}', tokenizer='byte')
  prepare.prepare(other, tmp_path / 'b', workers=1, progress=False)
  with pytest.raises(DataError, match='its tokenizer differs from the one this run trained with'):
    data.load(data_cfg('shakespeare', path=str(tmp_path / 'b')), run)


def test_in_memory_tokenizing_equals_the_prepared_shards(tmp_path, corpus_file):
  cfg = data_cfg(f'text:{corpus_file}')
  prepare.prepare(cfg, tmp_path / 'out', workers=1, progress=False)
  from_disk = data.load(data_cfg('shakespeare', path=str(tmp_path / 'out')))
  in_memory = data.load(cfg)
  for split in ('train', 'validation'):
    a, b = getattr(from_disk, split), getattr(in_memory, split)
    np.testing.assert_array_equal(a.read(0, len(a)), b.read(0, len(b)))


def test_tfds_source_prepares_from_mock_data(tmp_path):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    cfg = data_cfg('tfds:lm1b:train', tokenizer='byte', val_fraction=0.25)
    manifest = prepare.prepare(cfg, tmp_path, workers=1, progress=False)
  assert manifest['splits']['train']['documents'] == 15
  assert manifest['splits']['validation']['documents'] == 5


def test_empty_corpora_and_empty_validation_are_clear_errors(tmp_path):
  (tmp_path / 'blank.txt').write_text('\n \n\n')
  with pytest.raises(DataError, match='blank.txt: holds no text'):
    prepare.prepare(data_cfg(f'text:{tmp_path}/blank.txt'), tmp_path / 'o', progress=False)
  (tmp_path / 'few.txt').write_text('one\n\ntwo\n')
  with pytest.raises(DataError, match=r'validation split is empty; raise data.val_fraction'):
    prepare.prepare(data_cfg(f'text:{tmp_path}/few.txt'), tmp_path / 'o', progress=False)
  assert not (tmp_path / 'o' / tokens.MANIFEST).exists()


def test_damaged_prepared_data_is_refused_naming_the_file(tmp_path, corpus_file):
  out = tmp_path / 'out'
  with pytest.raises(FileNotFoundError, match=r'data.path=.*out: no manifest.json there'):
    tokens.open_prepared(out)
  prepare.prepare(data_cfg(f'text:{corpus_file}'), out, workers=1, progress=False)
  manifest = json.loads((out / tokens.MANIFEST).read_text())
  shard = out / manifest['splits']['train']['shards'][0]['file']
  ids = np.fromfile(shard, np.uint16)
  shard.write_bytes(ids[:-1].tobytes())
  with pytest.raises(DataError, match=r'train-00000.bin has \d+ bytes, the manifest says'):
    tokens.open_prepared(out)
  # A shard from another tool (no max_id in its manifest) with an id past the vocabulary.
  vocab = manifest['tokenizer']['vocab_size']
  shard.write_bytes(np.append(ids[:-1], vocab).astype(np.uint16).tobytes())
  del manifest['splits']['train']['shards'][0]['max_id']
  (out / tokens.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(DataError, match=rf'train-00000.bin holds token id {vocab}, outside'):
    tokens.open_prepared(out)
