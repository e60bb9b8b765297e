"""GPT-2 (`GPT2LMHeadModel`, `GPT2Model`) <-> our GPT: the family's facts and its one weight table.

GPT-2's Conv1D weights are (in, out), as ours, so kernels only change shape: the fused qkv
(d, 3d) splits into (d, 3, heads, head_dim) and the output projection's input into heads.
"""

from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.inference.hf.table import norm, reshaped, same

NAME = 'GPT-2'
MODEL_TYPE = 'gpt2'  # config.json's model_type
MODEL = 'gpt'  # our model.name
TOKENIZER = 'gpt2'  # our data.tokenizer kind: vocab.json + merges.txt
PREFIX = 'transformer.'  # GPT2LMHeadModel's names start with it, GPT2Model's do not
UNPREFIXED = ()  # names written without PREFIX on export
ARCHITECTURES = ('GPT2LMHeadModel', 'GPT2Model')
# Config values our GPT implements; any other would import silently wrong.
REQUIRED = {
  'activation_function': ('gelu_new', 'gelu_pytorch_tanh'),
  'scale_attn_weights': (True,),
  'scale_attn_by_inverse_layer_idx': (False,),
  'reorder_and_upcast_attn': (False,),
  'add_cross_attention': (False,),
}
EPSILON = ('layer_norm_epsilon', 1e-5)  # its LayerNorm epsilon: config key, the value we use


def read_tokenizer(src) -> tokenizer_lib.HFTokenizer:
  """The byte-level BPE in the HF directory `src`."""
  return tokenizer_lib.HFTokenizer.gpt2(str(src))


def model_section(hf: dict) -> dict:
  """Our `model.*` settings for a GPT-2 config.json, but for mlp_ratio (see `mlp_width`)."""
  return dict(
    name=MODEL, vocab_size=hf['vocab_size'], block_size=hf['n_positions'],
    n_layer=hf['n_layer'], n_head=hf['n_head'], n_embd=hf['n_embd'],
  )  # fmt: skip


def mlp_width(hf: dict) -> int:
  """The hidden width of a GPT-2 config.json's MLP."""
  return hf.get('n_inner') or 4 * hf['n_embd']


def hf_config(m, weights: dict, tokenizer) -> dict:
  """The GPT2LMHeadModel config.json of our `model` section `m` and its exported `weights`."""
  return {
    'model_type': MODEL_TYPE,
    'architectures': ['GPT2LMHeadModel'],
    'vocab_size': weights['wte.weight'].shape[0],  # padding included: logits match id for id
    'n_positions': m.block_size,
    'n_embd': m.n_embd,
    'n_layer': m.n_layer,
    'n_head': m.n_head,
    'n_inner': m.mlp_ratio * m.n_embd,
    'activation_function': 'gelu_new',
    'layer_norm_epsilon': EPSILON[1],
    'tie_word_embeddings': True,
    'bos_token_id': tokenizer.eos_id,
    'eos_token_id': tokenizer.eos_id,
  }


def table(m) -> list:
  """(HF name, our parameter path, to_ours, to_hf) for a GPT of `model` section `m`; `{i}` is
  the layer."""
  d, heads = m.n_embd, (m.n_head, m.n_embd // m.n_head)
  qkv = (3, *heads)  # HF fuses q, k and v along its output axis, (d, 3d)
  return [
    ('wte.weight', 'wte.embedding', *same()),
    ('wpe.weight', 'wpe.embedding', *same()),
    *norm('h.{i}.ln_1', 'blocks.{i}.ln_1'),
    ('h.{i}.attn.c_attn.weight', 'blocks.{i}.attn.qkv.kernel', *reshaped((d, *qkv), (d, 3 * d))),
    ('h.{i}.attn.c_attn.bias', 'blocks.{i}.attn.qkv.bias', *reshaped(qkv, (3 * d,))),
    ('h.{i}.attn.c_proj.weight', 'blocks.{i}.attn.proj.kernel', *reshaped((*heads, d), (d, d))),
    ('h.{i}.attn.c_proj.bias', 'blocks.{i}.attn.proj.bias', *same()),
    *norm('h.{i}.ln_2', 'blocks.{i}.ln_2'),
    ('h.{i}.mlp.c_fc.weight', 'blocks.{i}.mlp.fc.kernel', *same()),
    ('h.{i}.mlp.c_fc.bias', 'blocks.{i}.mlp.fc.bias', *same()),
    ('h.{i}.mlp.c_proj.weight', 'blocks.{i}.mlp.proj.kernel', *same()),
    ('h.{i}.mlp.c_proj.bias', 'blocks.{i}.mlp.proj.bias', *same()),
    *norm('ln_f', 'ln_f'),
  ]
