import io

import numpy as np
import pytest

from llm_jax.data import DataError, corpus
from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.data.tokenizer import EOS_TEXT, UNKNOWN, CharTokenizer

TEXT = 'To be, or not to be: that is the question.\nWhether ’tis nobler — ünïcödé 🎭\n\n'


def saved_and_loaded(tok, tmp_path):
  tok.save(tmp_path / 'tok.json')
  again = tokenizer_lib.load(tmp_path / 'tok.json')
  assert (again.kind, again.vocab_size, again.eos_id) == (tok.kind, tok.vocab_size, tok.eos_id)
  np.testing.assert_array_equal(again.encode(TEXT), tok.encode(TEXT))
  return again


def test_char_round_trip_unknown_and_eos(tmp_path):
  tok = CharTokenizer.from_texts(['hello', ' world'])
  assert tok.vocab_size == len(set('hello world')) + 2  # + unknown + EOS
  ids = tok.encode('hello')
  assert ids.dtype == np.uint16 and tok.decode(ids) == 'hello'
  assert tok.decode(tok.encode('hex')) == 'he' + UNKNOWN
  assert tok.decode([tok.eos_id]) == EOS_TEXT
  saved_and_loaded(tok, tmp_path)


def test_byte_tokenizer_encodes_any_text(tmp_path):
  tok = tokenizer_lib.build('byte', 0, [])
  ids = tok.encode(TEXT)
  assert tok.vocab_size == 257 and ids.max() < 256 and tok.decode(ids) == TEXT
  assert tok.decode(np.append(ids, tok.eos_id)) == TEXT + EOS_TEXT
  saved_and_loaded(tok, tmp_path)


@pytest.fixture(scope='module')
def bpe():
  plays = corpus.load_plays()
  return tokenizer_lib.build('bpe', 512, (p.text for p in plays)), plays


def test_bpe_round_trips_the_whole_corpus(bpe, tmp_path):
  tok, plays = bpe
  assert tok.vocab_size == 512 and tok.kind == 'bpe'
  texts = [p.text for p in plays] + [TEXT]
  encoded = tok.encode_batch(texts)
  assert all(tok.decode(ids) == text for ids, text in zip(encoded, texts, strict=True))
  # Merges compress: well under one id per character.
  assert sum(map(len, encoded)) < 0.6 * sum(map(len, texts))
  saved_and_loaded(tok, tmp_path)


def test_gpt2_files_load_as_the_same_tokenizer(bpe, tmp_path):
  tok, _ = bpe
  tok._tok.model.save(str(tmp_path))  # writes vocab.json and merges.txt, as GPT-2 ships them
  gpt2 = tokenizer_lib.build(f'gpt2:{tmp_path}', 0, [])
  assert gpt2.kind == 'gpt2' and gpt2.eos_id == tok.eos_id
  np.testing.assert_array_equal(gpt2.encode(TEXT), tok.encode(TEXT))
  assert gpt2.decode(gpt2.encode(TEXT)) == TEXT
  saved_and_loaded(gpt2, tmp_path)
  with pytest.raises(FileNotFoundError, match='nowhere/vocab.json'):
    tokenizer_lib.build('gpt2:nowhere', 0, [])


def test_sentencepiece_model_file(tmp_path):
  import sentencepiece

  model = io.BytesIO()
  lines = [line for p in corpus.load_plays()[:2] for line in p.text.splitlines() if line]
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter(lines), model_writer=model, vocab_size=200, minloglevel=2
  )
  (tmp_path / 'sp.model').write_bytes(model.getvalue())
  tok = tokenizer_lib.build(f'sentencepiece:{tmp_path / "sp.model"}', 0, [])
  assert tok.vocab_size == 200 and tok.eos_id >= 0
  assert tok.decode(tok.encode('to be or not to be')) == 'to be or not to be'
  saved_and_loaded(tok, tmp_path)
  (tmp_path / 'bad.model').write_bytes(b'not a model')
  with pytest.raises(DataError, match='bad.model is not a SentencePiece model'):
    tokenizer_lib.build(f'sentencepiece:{tmp_path / "bad.model"}', 0, [])


def test_bad_specs_and_files_name_the_field_or_file(tmp_path):
  with pytest.raises(DataError, match='data.vocab_size=100: a byte-level BPE needs at least'):
    tokenizer_lib.build('bpe', 100, ['abc'])
  with pytest.raises(DataError, match="data.tokenizer='wordpiece'"):
    tokenizer_lib.parse('wordpiece')
  with pytest.raises(FileNotFoundError, match='missing.json'):
    tokenizer_lib.load(tmp_path / 'missing.json')
  (tmp_path / 'bad.json').write_text('{not json')
  with pytest.raises(DataError, match='bad.json'):
    tokenizer_lib.load(tmp_path / 'bad.json')
  (tmp_path / 'odd.json').write_text('{"kind": "morse"}')
  with pytest.raises(DataError, match="odd.json is damaged.*'morse'"):
    tokenizer_lib.load(tmp_path / 'odd.json')
