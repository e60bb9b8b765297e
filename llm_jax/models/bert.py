"""BERT: a bidirectional Transformer encoder with a masked-language-model head, in Flax NNX.

Token, position and token-type embeddings summed and normalised; encoder blocks that are post-LN
as in the original (`norm='pre'` for pre-LN, which trains more stably when deep); a GELU MLP; and
an MLM head (dense, GELU, LayerNorm, then the input embeddings transposed plus a bias). Padding
is right-aligned and given as lengths, so attention ignores it on every backend (cuDNN included).
The attention and MLP layers, and their logical axis names, are the shared ones (`layers.py`): one
sharding rules table serves every family. The config is `configs.BERTConfig`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from llm_jax.models.configs import BERTConfig
from llm_jax.models.layers import (
  DTYPES,
  MLP,
  Attention,
  apply_blocks,
  axes,
  layer_norm,
  make_blocks,
  normal,
  tied_logits,
)

EPSILON = 1e-12  # BERT's LayerNorm epsilon


class EncoderBlock(nnx.Module):
  def __init__(self, cfg: BERTConfig, *, rngs: nnx.Rngs):
    self.post = cfg.norm == 'post'
    self.attn = Attention(cfg, causal=False, rngs=rngs)
    self.ln_1 = layer_norm(cfg, rngs, EPSILON)
    self.mlp = MLP(cfg, exact_gelu=True, rngs=rngs)
    self.ln_2 = layer_norm(cfg, rngs, EPSILON)
    self.dropout = nnx.Dropout(cfg.dropout)

  def __call__(self, x, positions, lengths, rngs: nnx.Rngs | None):
    drop = lambda y: self.dropout(y, deterministic=rngs is None, rngs=rngs)
    if self.post:
      x = self.ln_1(x + drop(self.attn(x, positions, kv_lengths=lengths)))
      return self.ln_2(x + drop(self.mlp(x)))
    x = x + drop(self.attn(self.ln_1(x), positions, kv_lengths=lengths))
    return x + drop(self.mlp(self.ln_2(x)))


class Encoder(nnx.Module):
  """Embeddings and encoder blocks: what a classifier fine-tunes."""

  def __init__(self, cfg: BERTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = DTYPES[cfg.dtype]
    embed = lambda n, names: nnx.Embed(
      n, cfg.n_embd, dtype=dtype, embedding_init=normal(0.02), embedding_metadata=axes(*names),
      rngs=rngs,
    )  # fmt: skip
    self.wte = embed(cfg.vocab_size, ('vocab', 'embed'))
    if cfg.position == 'learned':
      self.wpe = embed(cfg.block_size, (None, 'embed'))
    self.wtt = embed(cfg.type_vocab_size, (None, 'embed'))
    self.ln_emb = layer_norm(cfg, rngs, EPSILON)
    self.dropout = nnx.Dropout(cfg.dropout)
    self.blocks = make_blocks(cfg, lambda rngs: EncoderBlock(cfg, rngs=rngs), rngs)
    # Pre-LN leaves the residual stream unnormalised: one last LayerNorm, as in GPT.
    self.ln_f = layer_norm(cfg, rngs, EPSILON) if cfg.norm == 'pre' else None

  def __call__(self, tokens, *, lengths=None, token_types=None, rngs: nnx.Rngs | None = None):
    """Hidden states (B, T, C) for tokens (B, T); `lengths` (B,): tokens past them are padding."""
    positions = jnp.arange(tokens.shape[1])[None]  # (1, T)
    x = self.wte(tokens) + self.wtt(jnp.zeros_like(tokens) if token_types is None else token_types)
    if self.cfg.position == 'learned':
      x = x + self.wpe(positions)
    x = self.dropout(self.ln_emb(x), deterministic=rngs is None, rngs=rngs)
    x = apply_blocks(self.cfg, self.blocks, x, positions, lengths, rngs=rngs)
    return x if self.ln_f is None else self.ln_f(x)


class BERT(nnx.Module):
  def __init__(self, cfg: BERTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.mlm_dense = nnx.Linear(
      cfg.n_embd,
      cfg.n_embd,
      dtype=DTYPES[cfg.dtype],
      kernel_init=normal(0.02),
      kernel_metadata=axes('embed', None),
      bias_metadata=axes(None),
      rngs=rngs,
    )
    self.mlm_ln = layer_norm(cfg, rngs, EPSILON)
    self.mlm_bias = nnx.Param(jnp.zeros((cfg.vocab_size,)), sharding_names=('vocab',))

  def __call__(
    self, tokens, *, lengths=None, token_types=None, positions=None, rngs: nnx.Rngs | None = None
  ):
    """MLM logits (B, T, V) in fp32 for tokens (B, T); with `positions` (B, K), only at those
    (the vocabulary projection is most of the head's cost, and MLM scores ~15% of positions)."""
    x = self.encoder(tokens, lengths=lengths, token_types=token_types, rngs=rngs)
    if positions is not None:
      x = jnp.take_along_axis(x, positions[..., None], axis=1)  # (B, K, C)
    x = self.mlm_ln(jax.nn.gelu(self.mlm_dense(x), approximate=False))
    return tied_logits(self.encoder.wte, x) + self.mlm_bias[...]  # tied decoder
