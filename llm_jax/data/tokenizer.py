"""Tokenizers: characters (default), bytes, BPE trained here, GPT-2 files, SentencePiece models.

`data.tokenizer` names one: `char`, `byte`, `bpe` (byte-level BPE trained on the training
documents with HF `tokenizers`, `data.vocab_size` entries), `gpt2:DIR` (`vocab.json` and
`merges.txt` in DIR) or `sentencepiece:FILE` (a `.model` file). Every tokenizer has an
end-of-sequence id that separates documents, and saves itself as one self-contained JSON file,
so prepared data and each run's workdir carry exactly the tokenizer their ids came from.
"""

import base64
import json
import pathlib
from collections.abc import Iterable

import numpy as np
from etils import epath

from llm_jax import storage
from llm_jax.data.errors import DataError
from llm_jax.errors import MissingFile

KINDS = ('char', 'byte', 'bpe', 'gpt2', 'wordpiece', 'sentencepiece')
WITH_FILES = ('gpt2', 'wordpiece', 'sentencepiece')  # kinds read from files: KIND:PATH
EOS_TEXT = '<|endoftext|>'
WORDPIECE_SEP = '[SEP]'  # BERT's separator: the end of a document
WORDPIECE_SPECIALS = ('[PAD]', '[UNK]', '[CLS]', WORDPIECE_SEP, '[MASK]')
UNKNOWN = '\ufffd'
MIN_BPE_VOCAB = 258  # 256 byte symbols, the end-of-sequence token and at least one merge


def parse(spec: str) -> tuple[str, str]:
  """('gpt2', 'DIR') from 'gpt2:DIR'; DataError naming data.tokenizer when malformed."""
  kind, _, arg = spec.partition(':')
  if kind not in KINDS:
    raise DataError(f'data.tokenizer={spec!r}: unknown kind {kind!r}; choose one of {KINDS}')
  if (kind in WITH_FILES) != bool(arg):
    raise DataError(
      f'data.tokenizer={spec!r}: write gpt2:DIR, wordpiece:DIR or sentencepiece:FILE; char, byte'
      ' and bpe take no argument'
    )
  return kind, arg


class Tokenizer:
  """Text <-> ids. Subclasses set `kind`, `vocab_size`, `eos_id` and the conversions.

  `cls_id` and `mask_id`: an encoder's [CLS] and [MASK] when the vocabulary has its own (BERT's
  WordPiece); None means encoders append them after the vocabulary.
  """

  kind: str
  vocab_size: int
  eos_id: int
  cls_id: int | None = None
  mask_id: int | None = None

  @property
  def dtype(self):
    """The narrowest unsigned type holding every id: token files take half the space in uint16."""
    return np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

  def special_ids(self) -> tuple[int, ...]:
    """The ids that stand for no text of their own (EOS, unknown, padding, [CLS], ...)."""
    return (self.eos_id,)

  def encode(self, text: str) -> np.ndarray:
    raise NotImplementedError

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    raise NotImplementedError

  def to_json(self) -> dict:
    raise NotImplementedError

  def spec(self) -> dict:
    return dict(kind=self.kind, **self.to_json())

  def save(self, path: epath.Path) -> None:
    """Writes the tokenizer at `path`; another process reading it meanwhile sees all or none."""
    storage.write_atomic(path, json.dumps(self.spec()))


class CharTokenizer(Tokenizer):
  """One id per character seen in training; one id for any unseen character, then EOS."""

  kind = 'char'

  def __init__(self, chars: str):
    if len(set(chars)) != len(chars):
      raise DataError('tokenizer characters must be unique')
    self.chars = chars
    self._ids = {c: i for i, c in enumerate(chars)}
    self.unknown_id = len(chars)
    self.eos_id = len(chars) + 1
    self.vocab_size = len(chars) + 2

  @classmethod
  def from_texts(cls, texts: Iterable[str]) -> 'CharTokenizer':
    seen = set()
    for text in texts:
      seen.update(text)
    return cls(''.join(sorted(seen)))

  def special_ids(self):
    return (self.unknown_id, self.eos_id)

  def encode(self, text: str) -> np.ndarray:
    return np.fromiter((self._ids.get(c, self.unknown_id) for c in text), self.dtype, len(text))

  def decode(self, ids) -> str:
    table = [*self.chars, UNKNOWN, EOS_TEXT]
    return ''.join(table[i] if i < len(table) else UNKNOWN for i in np.asarray(ids).tolist())

  def to_json(self) -> dict:
    return {'chars': self.chars}


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes as ids 0-255, EOS 256: encodes any text with no training."""

  kind = 'byte'
  eos_id = 256
  vocab_size = 257

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(self.dtype)

  def decode(self, ids) -> str:
    ids = np.asarray(ids)
    pieces = np.split(ids, np.flatnonzero(ids >= 256))
    out = [pieces[0].astype(np.uint8).tobytes().decode('utf-8', 'replace')]
    for piece in pieces[1:]:
      out.append(EOS_TEXT if piece[0] == self.eos_id else UNKNOWN)
      out.append(piece[1:].astype(np.uint8).tobytes().decode('utf-8', 'replace'))
    return ''.join(out)

  def to_json(self) -> dict:
    return {}


class HFTokenizer(Tokenizer):
  """HF `tokenizers`: a byte-level BPE trained here (`bpe`) or read from GPT-2's files (`gpt2`),
  or BERT's WordPiece vocabulary (`wordpiece`, where [SEP] ends documents)."""

  def __init__(self, kind: str, tokenizer):
    self.kind = kind
    self._tok = tokenizer
    eos_text = WORDPIECE_SEP if kind == 'wordpiece' else EOS_TEXT
    eos = tokenizer.token_to_id(eos_text)
    if eos is None:
      raise DataError(f'the {kind} tokenizer has no {eos_text} token')
    self.eos_id = eos
    self.vocab_size = tokenizer.get_vocab_size()
    if kind == 'wordpiece':
      self.cls_id, self.mask_id = tokenizer.token_to_id('[CLS]'), tokenizer.token_to_id('[MASK]')
      if self.cls_id is None or self.mask_id is None:
        raise DataError('the wordpiece vocabulary has no [CLS] or [MASK] token')

  @classmethod
  def wordpiece(cls, directory: str) -> 'HFTokenizer':
    """BERT's vocab.txt, lower-cased unless tokenizer_config.json says do_lower_case=false."""
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, normalizers

    directory = pathlib.Path(directory)
    if not (directory / 'vocab.txt').is_file():
      raise MissingFile(f'data.tokenizer=wordpiece:{directory}: vocab.txt not found')
    settings = directory / 'tokenizer_config.json'
    lower = (
      json.loads(settings.read_text()).get('do_lower_case', True) if settings.is_file() else True
    )
    tok = HF(_models().WordPiece.from_file(str(directory / 'vocab.txt'), unk_token='[UNK]'))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lower)
    tok.pre_tokenizer = _pre_tokenizers().BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return cls('wordpiece', tok)

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int) -> 'HFTokenizer':
    from tokenizers import trainers

    if vocab_size < MIN_BPE_VOCAB:
      raise DataError(
        f'data.vocab_size={vocab_size}: a byte-level BPE needs at least {MIN_BPE_VOCAB}'
      )
    tok = _byte_level(_models().BPE())
    trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=[EOS_TEXT],
      initial_alphabet=_pre_tokenizers().ByteLevel.alphabet(),  # every byte: nothing is unknown
      show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return cls('bpe', tok)

  @classmethod
  def gpt2(cls, directory: str) -> 'HFTokenizer':
    files = [pathlib.Path(directory) / name for name in ('vocab.json', 'merges.txt')]
    for f in files:
      if not f.is_file():
        raise MissingFile(f'data.tokenizer=gpt2:{directory}: {f} not found')
    tok = _byte_level(_models().BPE.from_file(*map(str, files)))
    tok.add_special_tokens([EOS_TEXT])
    return cls('gpt2', tok)

  def special_ids(self):
    added = [i for i, t in self._tok.get_added_tokens_decoder().items() if t.special]
    named = [self._tok.token_to_id(t) for t in (EOS_TEXT, *WORDPIECE_SPECIALS)]
    return tuple(sorted({self.eos_id, *added, *(i for i in named if i is not None)}))

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, self.dtype)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    # The Rust tokenizer spreads a batch over threads.
    encodings = self._tok.encode_batch_fast(texts, add_special_tokens=False)
    return [np.asarray(e.ids, self.dtype) for e in encodings]

  def decode(self, ids) -> str:
    return self._tok.decode(np.asarray(ids).tolist(), skip_special_tokens=False)

  def to_json(self) -> dict:
    return {'tokenizer': self._tok.to_str()}

  def save_hf(self, directory) -> None:
    """The files `transformers` reads: tokenizer.json (PreTrainedTokenizerFast), and vocab.txt
    (BertTokenizer) or vocab.json + merges.txt (GPT2Tokenizer)."""
    directory = storage.path(directory)
    (directory / 'tokenizer.json').write_text(self._tok.to_str())
    if self.kind == 'wordpiece':
      vocab = self._tok.get_vocab()
      (directory / 'vocab.txt').write_text(''.join(t + '\n' for t in sorted(vocab, key=vocab.get)))
      return
    vocab, merges = json.loads(self._tok.to_str())['model'], []
    (directory / 'vocab.json').write_text(json.dumps(vocab['vocab'], ensure_ascii=False))
    for merge in vocab['merges']:
      merges.append(merge if isinstance(merge, str) else ' '.join(merge))
    (directory / 'merges.txt').write_text('#version: 0.2\n' + '\n'.join(merges) + '\n')


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model; its own EOS piece separates documents."""

  kind = 'sentencepiece'

  def __init__(self, model_proto: bytes, name: str = 'the SentencePiece model'):
    import sentencepiece

    self._proto = model_proto
    try:
      self._sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
    except RuntimeError as e:
      raise DataError(f'{name} is not a SentencePiece model: {e}') from None
    if self._sp.eos_id() < 0:
      raise DataError(f'{name} has no EOS piece to separate documents')
    self.eos_id = self._sp.eos_id()
    self.vocab_size = self._sp.get_piece_size()

  @classmethod
  def from_file(cls, path: str) -> 'SentencePieceTokenizer':
    try:
      return cls(pathlib.Path(path).read_bytes(), name=path)
    except FileNotFoundError:
      raise MissingFile(f'data.tokenizer=sentencepiece:{path}: {path} not found') from None

  def special_ids(self):
    sp = self._sp
    return tuple(i for i in range(self.vocab_size) if sp.is_control(i) or sp.is_unknown(i))

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), self.dtype)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(ids, self.dtype) for ids in self._sp.encode(texts)]

  def decode(self, ids) -> str:
    return self._sp.decode(np.asarray(ids).tolist())

  def to_json(self) -> dict:
    return {'model': base64.b64encode(self._proto).decode('ascii')}


def _models():
  from tokenizers import models

  return models


def _pre_tokenizers():
  from tokenizers import pre_tokenizers

  return pre_tokenizers


def _byte_level(model):
  from tokenizers import Tokenizer as HF
  from tokenizers import decoders

  tok = HF(model)
  # No prefix space: decode(encode(text)) == text, byte for byte.
  tok.pre_tokenizer = _pre_tokenizers().ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  return tok


def build(spec: str, vocab_size: int, train_texts: Iterable[str]) -> Tokenizer:
  """The tokenizer `spec` names; `char` and `bpe` learn from `train_texts`."""
  kind, arg = parse(spec)
  if kind == 'char':
    return CharTokenizer.from_texts(train_texts)
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'bpe':
    return HFTokenizer.train(train_texts, vocab_size)
  if kind == 'gpt2':
    return HFTokenizer.gpt2(arg)
  if kind == 'wordpiece':
    return HFTokenizer.wordpiece(arg)
  return SentencePieceTokenizer.from_file(arg)


def from_json(spec: dict) -> Tokenizer:
  """The tokenizer that `Tokenizer.save` wrote as `spec`."""
  kind = spec.get('kind') if isinstance(spec, dict) else None
  if kind == 'char':
    return CharTokenizer(spec['chars'])
  if kind == 'byte':
    return ByteTokenizer()
  if kind in ('bpe', 'gpt2', 'wordpiece'):
    from tokenizers import Tokenizer as HF

    return HFTokenizer(kind, HF.from_str(spec['tokenizer']))
  if kind == 'sentencepiece':
    return SentencePieceTokenizer(base64.b64decode(spec['model']))
  raise DataError(f'unknown tokenizer kind {kind!r}; expected one of {KINDS}')


def load(path) -> Tokenizer:
  """A tokenizer saved by `Tokenizer.save`, of any kind."""
  path = storage.path(path)
  try:
    return from_json(json.loads(path.read_text(encoding='utf-8')))
  except FileNotFoundError:
    raise MissingFile(f'tokenizer file not found: {path}') from None
  except Exception as e:  # noqa: BLE001 -- `tokenizers` raises bare Exception on bad JSON
    raise DataError(f'tokenizer file {path} is damaged ({type(e).__name__}: {e})') from None
