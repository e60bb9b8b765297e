"""Character-level tokenizer: one id per character seen in the training text.

Characters that never appear in training (rare in held-out plays) map to one unknown id, so
validation text never fails to encode. The vocabulary is saved as JSON in the workdir.
"""

import json
import pathlib

import numpy as np

UNKNOWN = '\ufffd'


class CharTokenizer:
  """Maps characters to ids; id `len(chars)` stands for any unseen character."""

  kind = 'char'

  def __init__(self, chars: str):
    if len(set(chars)) != len(chars):
      raise ValueError('tokenizer characters must be unique')
    self.chars = chars
    self._ids = {c: i for i, c in enumerate(chars)}
    self.unknown_id = len(chars)

  @classmethod
  def from_text(cls, text: str) -> 'CharTokenizer':
    return cls(''.join(sorted(set(text))))

  @property
  def vocab_size(self) -> int:
    return len(self.chars) + 1

  def encode(self, text: str) -> np.ndarray:
    """Text to a uint16 (or int32 for large vocabularies) id array."""
    dtype = np.uint16 if self.vocab_size <= np.iinfo(np.uint16).max else np.int32
    return np.fromiter((self._ids.get(c, self.unknown_id) for c in text), dtype, len(text))

  def decode(self, ids) -> str:
    return ''.join(
      self.chars[i] if i < len(self.chars) else UNKNOWN for i in np.asarray(ids).tolist()
    )

  def save(self, path: pathlib.Path) -> None:
    path.write_text(json.dumps({'kind': self.kind, 'chars': self.chars}), encoding='utf-8')

  @classmethod
  def load(cls, path: pathlib.Path) -> 'CharTokenizer':
    try:
      spec = json.loads(pathlib.Path(path).read_text(encoding='utf-8'))
    except FileNotFoundError:
      raise FileNotFoundError(f'tokenizer file not found: {path}') from None
    except json.JSONDecodeError as e:
      raise ValueError(f'tokenizer file {path} is not valid JSON: {e}') from None
    if spec.get('kind') != cls.kind or not isinstance(spec.get('chars'), str):
      raise ValueError(f'tokenizer file {path} is not a character tokenizer')
    return cls(spec['chars'])
