import numpy as np
import pytest

from llm_jax.data.tokenizer import UNKNOWN, CharTokenizer


def test_round_trip_and_unknown_characters(tmp_path):
  tok = CharTokenizer.from_text('hello world')
  assert tok.vocab_size == len(set('hello world')) + 1
  ids = tok.encode('hello')
  assert ids.dtype == np.uint16
  assert tok.decode(ids) == 'hello'
  assert tok.decode(tok.encode('hex')) == 'he' + UNKNOWN
  tok.save(tmp_path / 'tok.json')
  again = CharTokenizer.load(tmp_path / 'tok.json')
  assert again.chars == tok.chars
  np.testing.assert_array_equal(again.encode('world'), tok.encode('world'))


def test_bad_files_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.json'):
    CharTokenizer.load(tmp_path / 'missing.json')
  (tmp_path / 'bad.json').write_text('{not json')
  with pytest.raises(ValueError, match='bad.json'):
    CharTokenizer.load(tmp_path / 'bad.json')
