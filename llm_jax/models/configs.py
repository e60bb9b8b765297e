"""Model configs: a shared transformer config with each family's own fields on top.

The dataclasses are the one place model defaults live: `llm_jax.config` builds its `model`
section from them, and `from_section` builds a model's dataclass back from that section (plus
the tokenizer's vocabulary). This module imports no JAX, so loading a config file stays light; the
modules that build models (`layers`, `gpt`, `bert`, `classifier`, `registry`) import it.

A new family adds its dataclass here (its fields on top of `TransformerConfig`) and its module.
"""

import dataclasses

from llm_jax.errors import ConfigError, check, choice

DTYPES = ('float32', 'bfloat16')  # compute dtypes; parameters stay fp32
ATTENTION = ('auto', 'xla', 'cudnn', 'splash')
POSITIONS = ('learned', 'rope')
REMAT = ('none', 'dots_saveable', 'full')  # what a rematerialised block keeps (layers.py)
NORMS = ('post', 'pre')
SPLASH_LANES = 128  # the splash kernel tiles the sequence in blocks of the TPU's lane width
# A vocabulary taken from the tokenizer is padded to this multiple: fast matmuls, and a vocab axis
# that divides over tensor-parallel meshes. Padded ids never occur in data or samples.
VOCAB_MULTIPLE = 128
ENCODER_SPECIALS = 2  # [CLS] and [MASK], given the ids after a tokenizer's vocabulary
# Settings that leave the parameters alone: a run may resume, or fine-tune, with its own.
# (scan_layers changes their layout; checkpoints are restacked on restore, llm_jax/relayout.py.)
SHAPE_FREE_KEYS = ('dropout', 'dtype', 'attention', 'remat', 'scan_layers')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """What every family shares: sizes, positions, compute dtype, attention and layer layout."""

  vocab_size: int  # in a config section, 0: the tokenizer's, padded to VOCAB_MULTIPLE
  block_size: int = 256  # longest context; size of the learned position table
  n_layer: int = 6
  n_head: int = 6
  n_embd: int = 384
  mlp_ratio: int = 4
  dropout: float = 0.0
  bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2 and BERT
  position: str = 'learned'  # 'learned' table or 'rope'
  rope_theta: float = 10_000.0
  dtype: str = 'float32'  # compute dtype; parameters stay fp32
  attention: str = 'auto'  # 'auto' picks cudnn on GPU with bf16, else xla; or 'splash' (TPU)
  scan_layers: bool = False  # blocks stacked and scanned: compile time independent of depth
  remat: str = 'none'  # recompute activations in the backward pass: a name in REMAT

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head


@dataclasses.dataclass(frozen=True)
class GPTConfig(TransformerConfig):
  """GPT-2: a pre-LN decoder with tied embeddings; nothing beyond the shared fields."""


@dataclasses.dataclass(frozen=True)
class BERTConfig(TransformerConfig):
  """BERT: an encoder with token-type embeddings and an MLM head."""

  norm: str = 'post'  # 'post'-LN as published, or 'pre'
  type_vocab_size: int = 2  # token-type (segment) embeddings


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  backbone: GPTConfig | BERTConfig
  num_classes: int

  @property
  def dropout(self) -> float:
    return self.backbone.dropout  # the head drops out as much as the backbone


FAMILIES = {'gpt': GPTConfig, 'bert': BERTConfig}  # by `model.name`


def section_defaults() -> dict:
  """The `model` config section: the family name and every family's fields, with defaults."""
  defaults = {'name': 'gpt', 'vocab_size': 0}
  for family in FAMILIES.values():
    for field in dataclasses.fields(family):
      if field.default is not dataclasses.MISSING:
        defaults.setdefault(field.name, field.default)
  return defaults


def tokenizer_vocab(name: str, tokenizer) -> int:
  """Ids a model of family `name` must embed: the tokenizer's, plus [CLS] and [MASK] for
  encoders whose tokenizer lacks them."""
  appended = name == 'bert' and tokenizer.cls_id is None
  return tokenizer.vocab_size + (ENCODER_SPECIALS if appended else 0)


def encoder_ids(tokenizer) -> tuple[int, int]:
  """An encoder's ([CLS], [MASK]) ids: the tokenizer's own, else the two after its vocabulary."""
  if tokenizer.cls_id is not None:
    return tokenizer.cls_id, tokenizer.mask_id
  return tokenizer.vocab_size, tokenizer.vocab_size + 1


def from_section(section, vocab_size: int) -> TransformerConfig:
  """The family's dataclass from the `model` section; `model.vocab_size=0` takes `vocab_size`
  (the ids the data needs), padded to VOCAB_MULTIPLE."""
  family = FAMILIES[section.name]
  fields = {f.name for f in dataclasses.fields(family)}
  values = {k: v for k, v in section.items() if k in fields}
  values['vocab_size'] = section.vocab_size or -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
  return family(**values)


def for_tokenizer(section, tokenizer) -> TransformerConfig:
  """The model of `section` for `tokenizer`'s ids; ConfigError if model.vocab_size is smaller."""
  needed = tokenizer_vocab(section.name, tokenizer)
  model_cfg = from_section(section, needed)
  if model_cfg.vocab_size < needed:
    raise ConfigError(
      f'model.vocab_size={section.vocab_size} is smaller than the {needed} ids the'
      f' {tokenizer.kind} tokenizer needs'
    )
  return model_cfg


def validate(m, *, backend: str, seq_len: int) -> None:
  """Checks the `model` section for `backend` and sequences of `seq_len` tokens."""
  choice(m.name, 'model.name', tuple(FAMILIES))
  choice(m.dtype, 'model.dtype', DTYPES)
  choice(m.attention, 'model.attention', ATTENTION)
  choice(m.position, 'model.position', POSITIONS)
  choice(m.remat, 'model.remat', REMAT)
  choice(m.norm, 'model.norm', NORMS)
  for field in ('n_layer', 'n_head', 'n_embd', 'block_size', 'mlp_ratio'):
    check(m[field] > 0, f'model.{field}={m[field]} must be positive')
  check(m.vocab_size >= 0, f'model.vocab_size={m.vocab_size} must be >= 0 (0: from the tokenizer)')
  check(
    m.n_embd % m.n_head == 0,
    f'model.n_embd={m.n_embd} must be divisible by model.n_head={m.n_head}',
  )
  check(
    m.position != 'rope' or (m.n_embd // m.n_head) % 2 == 0,
    f'model.position=rope needs an even head size, got n_embd/n_head={m.n_embd // m.n_head}',
  )
  check(0.0 <= m.dropout < 1.0, f'model.dropout={m.dropout} must be in [0, 1)')
  check(
    m.attention != 'cudnn' or backend == 'gpu',
    f"model.attention='cudnn' needs a GPU, but the backend is {backend}",
  )
  check(
    m.attention != 'splash' or backend == 'tpu',
    f"model.attention='splash' (a Pallas TPU kernel) needs a TPU, but the backend is {backend}",
  )
  check(
    m.attention != 'splash' or seq_len % SPLASH_LANES == 0,
    f"model.attention='splash' tiles the sequence in blocks of {SPLASH_LANES}:"
    f' data.seq_len={seq_len} is not a multiple',
  )
  check(
    0 < seq_len <= m.block_size,
    f'data.seq_len={seq_len} must be in [1, model.block_size={m.block_size}] (the position table)',
  )
