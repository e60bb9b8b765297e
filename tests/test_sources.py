import json

import ml_collections
import pytest

from llm_jax import config
from llm_jax.data import DataError, sources


def data_cfg(source, **kw) -> ml_collections.ConfigDict:
  d = config.base_config().data
  d.update(source=source, **kw)
  return d


def texts(src) -> list[str]:
  return [record[src.text_field] for _, record in src.all_records()]


def test_text_documents_split_at_blank_lines_or_by_file(tmp_path):
  (tmp_path / 'a.txt').write_text('one\nstill one\n\n\ntwo\n  \nthree\n')
  (tmp_path / 'b.txt').write_text('four\n')
  src = sources.open_source(data_cfg(f'text:{tmp_path}/*.txt', val_fraction=0.5))
  assert texts(src) == ['one\nstill one', 'two', 'three', 'four']
  assert list(src.documents('train')) == ['one\nstill one', 'three']
  assert list(src.documents('validation')) == ['two', 'four']
  by_file = sources.open_source(data_cfg(f'text:{tmp_path}/*.txt', text_documents='file'))
  assert texts(by_file) == ['one\nstill one\n\n\ntwo\n  \nthree\n', 'four\n']


def test_every_kth_document_is_held_out():
  held = [i for i in range(100) if sources.is_validation(i, 0.05)]
  assert held == [19, 39, 59, 79, 99]


def test_jsonl_reads_the_configured_field_and_names_bad_lines(tmp_path):
  rows = [{'body': f'doc {i}', 'id': i} for i in range(4)]
  path = tmp_path / 'data.jsonl'
  path.write_text('\n'.join(json.dumps(r) for r in rows) + '\n\n')
  src = sources.open_source(data_cfg(f'jsonl:{path}', text_field='body'))
  assert texts(src) == [f'doc {i}' for i in range(4)]
  path.write_text('{"text": "fine"}\n{"text": 3}\n')
  with pytest.raises(DataError, match=r"data.jsonl:2: no str field 'text' \(data.text_field\)"):
    list(sources.open_source(data_cfg(f'jsonl:{path}')).documents('train'))
  path.write_text('{oops\n')
  with pytest.raises(DataError, match=r'data.jsonl:1: not JSON'):
    list(sources.open_source(data_cfg(f'jsonl:{path}')).documents('train'))


def test_missing_files_and_bad_encodings_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='data.source=text:.*nope.txt: no file matches'):
    sources.open_source(data_cfg(f'text:{tmp_path}/nope.txt'))
  (tmp_path / 'latin1.txt').write_bytes('café'.encode('latin-1'))
  with pytest.raises(DataError, match='latin1.txt is not UTF-8 text'):
    list(sources.open_source(data_cfg(f'text:{tmp_path}/latin1.txt')).documents('train'))


def test_tfds_source_reads_a_mocked_dataset():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
    src = sources.open_source(data_cfg('tfds:imdb_reviews:train', val_fraction=0.1))
    train, val = list(src.documents('train')), list(src.documents('validation'))
    assert len(train) == 27 and len(val) == 3 and all(isinstance(d, str) for d in train)
    with pytest.raises(DataError, match="records have no field 'body'.*fields: label, text"):
      sources.open_source(data_cfg('tfds:imdb_reviews:train', text_field='body'))
  with pytest.raises(DataError, match="TFDS has no dataset 'no_such_dataset'"):
    sources.open_source(data_cfg('tfds:no_such_dataset:train'))


def test_an_unbuilt_tfds_dataset_says_how_to_build_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'imdb_reviews is not built in .*tfds build'):
    sources.open_source(data_cfg('tfds:imdb_reviews:train', tfds_data_dir=str(tmp_path)))


def test_genre_passages_are_labelled_and_held_out_by_play():
  from llm_jax.data import corpus

  src = sources.open_source(data_cfg('genre', passage_chars=200))
  train = list(src.examples('train'))
  val = list(src.examples('validation'))
  assert {label for _, label, _ in train} == set(corpus.GENRES) == {label for _, label, _ in val}
  assert all(len(text) <= 200 for text, _, _ in train[:500])
  held_out = {where.split(' passage')[0] for _, _, where in val}
  assert held_out == set(corpus.VALIDATION_PLAYS)
