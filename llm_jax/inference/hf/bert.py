"""BERT (`BertForMaskedLM`) <-> our BERT: the family's facts and its one weight table.

torch Linear weights are (out, in) and ours (in, out), so kernels are transposed. Our fused qkv
kernel (d, 3, heads, head_dim) gathers three Linear weights (query, key, value), its bias three
biases: those entries name three HF tensors, stacked on import and split on export.
"""

import numpy as np

from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.inference.hf.table import norm, reshaped, same, transposed

NAME = 'BERT'
MODEL_TYPE = 'bert'  # config.json's model_type
MODEL = 'bert'  # our model.name
TOKENIZER = 'wordpiece'  # our data.tokenizer kind: vocab.txt
PREFIX = 'bert.'  # the encoder's names start with it
UNPREFIXED = ('cls.',)  # the MLM head's names, written without PREFIX on export
ARCHITECTURES = ('BertForMaskedLM',)
# Config values our BERT implements; any other would import silently wrong.
REQUIRED = {
  'hidden_act': ('gelu',),
  'position_embedding_type': ('absolute',),
  'is_decoder': (False,),
  'add_cross_attention': (False,),
}
EPSILON = ('layer_norm_eps', 1e-12)  # its LayerNorm epsilon: config key, the value we use


def read_tokenizer(src) -> tokenizer_lib.HFTokenizer:
  """The WordPiece vocabulary in the HF directory `src`."""
  return tokenizer_lib.HFTokenizer.wordpiece(str(src))


def model_section(hf: dict) -> dict:
  """Our `model.*` settings for a BERT config.json, but for mlp_ratio (see `mlp_width`)."""
  return dict(
    name=MODEL, vocab_size=hf['vocab_size'], block_size=hf['max_position_embeddings'],
    n_layer=hf['num_hidden_layers'], n_head=hf['num_attention_heads'], n_embd=hf['hidden_size'],
    type_vocab_size=hf['type_vocab_size'], dropout=hf.get('hidden_dropout_prob', 0.1),
    norm='post',
  )  # fmt: skip


def mlp_width(hf: dict) -> int:
  """The hidden width of a BERT config.json's MLP."""
  return hf['intermediate_size']


def hf_config(m, weights: dict, tokenizer) -> dict:
  """The BertForMaskedLM config.json of our `model` section `m` and its exported `weights`."""
  del tokenizer  # BERT's special ids are the vocabulary's own tokens
  return {
    'model_type': MODEL_TYPE,
    'architectures': ['BertForMaskedLM'],
    'vocab_size': weights['embeddings.word_embeddings.weight'].shape[0],
    'hidden_size': m.n_embd,
    'num_hidden_layers': m.n_layer,
    'num_attention_heads': m.n_head,
    'intermediate_size': m.mlp_ratio * m.n_embd,
    'hidden_act': 'gelu',
    'max_position_embeddings': m.block_size,
    'type_vocab_size': m.type_vocab_size,
    'layer_norm_eps': EPSILON[1],
    'position_embedding_type': 'absolute',
    'hidden_dropout_prob': m.dropout,
    'attention_probs_dropout_prob': 0.0,  # our attention has no dropout
    'tie_word_embeddings': True,
  }


def _fused(hf: tuple, ours: str, axis: int, to_ours, to_hf) -> tuple:
  """An entry of one of our tensors stacked on `axis` from the HF tensors named `hf`, each
  through `to_ours` (and split back through `to_hf`)."""
  stack = lambda *xs: np.stack([to_ours(x) for x in xs], axis)
  split = lambda y: tuple(to_hf(part) for part in np.moveaxis(y, axis, 0))
  return hf, ours, stack, split


def _dense(hf: str, ours: str) -> list:
  return [
    (f'{hf}.weight', f'{ours}.kernel', *transposed()),
    (f'{hf}.bias', f'{ours}.bias', *same()),
  ]


def table(m) -> list:
  """(HF name or names, our parameter path, to_ours, to_hf) for a BERT of `model` section `m`;
  `{i}` is the layer."""
  d, heads = m.n_embd, (m.n_head, m.n_embd // m.n_head)
  layer, block = 'encoder.layer.{i}', 'encoder.blocks.{i}'  # HF's and ours
  proj = transposed((*heads, d), (d, d))  # its input splits into heads
  qkv = lambda part: tuple(f'{layer}.attention.self.{x}.{part}' for x in ('query', 'key', 'value'))
  return [
    ('embeddings.word_embeddings.weight', 'encoder.wte.embedding', *same()),
    ('embeddings.position_embeddings.weight', 'encoder.wpe.embedding', *same()),
    ('embeddings.token_type_embeddings.weight', 'encoder.wtt.embedding', *same()),
    *norm('embeddings.LayerNorm', 'encoder.ln_emb'),
    _fused(qkv('weight'), f'{block}.attn.qkv.kernel', 1, *transposed((d, *heads), (d, d))),
    _fused(qkv('bias'), f'{block}.attn.qkv.bias', 0, *reshaped(heads, (d,))),
    (f'{layer}.attention.output.dense.weight', f'{block}.attn.proj.kernel', *proj),
    (f'{layer}.attention.output.dense.bias', f'{block}.attn.proj.bias', *same()),
    *norm(f'{layer}.attention.output.LayerNorm', f'{block}.ln_1'),
    *_dense(f'{layer}.intermediate.dense', f'{block}.mlp.fc'),
    *_dense(f'{layer}.output.dense', f'{block}.mlp.proj'),
    *norm(f'{layer}.output.LayerNorm', f'{block}.ln_2'),
    *_dense('cls.predictions.transform.dense', 'mlm_dense'),
    *norm('cls.predictions.transform.LayerNorm', 'mlm_ln'),
    ('cls.predictions.bias', 'mlm_bias', *same()),
  ]
