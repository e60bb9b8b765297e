"""GPT: a decoder-only Transformer in Flax NNX, read top to bottom.

Pre-LayerNorm blocks, causal self-attention through `jax.nn.dot_product_attention` (or the splash
kernel on TPU, `models/splash.py`), GELU MLP, token embeddings tied to the output projection, GPT-2
initialisation. Parameters are fp32; `dtype` sets the compute dtype. The shared pieces (attention,
MLP, the scanned or listed layers) are in `layers.py`; the config is `configs.GPTConfig`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from llm_jax.models.configs import GPTConfig
from llm_jax.models.layers import (
  DTYPES,
  MLP,
  Attention,
  KVCache,
  apply_blocks,
  axes,
  layer_norm,
  make_blocks,
  normal,
  tied_logits,
)


class Block(nnx.Module):
  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    self.ln_1 = layer_norm(cfg, rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.ln_2 = layer_norm(cfg, rngs)
    self.mlp = MLP(cfg, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout)

  def __call__(self, x, positions, segment_ids, rngs: nnx.Rngs | None):
    drop = rngs is None
    y = self.attn(self.ln_1(x), positions, segment_ids)
    x = x + self.dropout(y, deterministic=drop, rngs=rngs)
    return x + self.dropout(self.mlp(self.ln_2(x)), deterministic=drop, rngs=rngs)

  def decode(self, x, positions, cache: KVCache, layer):
    """`__call__` without dropout, attending over (and filling) layer `layer` of the cache."""
    y, cache = self.attn.decode(self.ln_1(x), positions, cache, layer)
    x = x + y
    return x + self.mlp(self.ln_2(x)), cache


class GPT(nnx.Module):
  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = DTYPES[cfg.dtype]
    self.wte = nnx.Embed(
      cfg.vocab_size,
      cfg.n_embd,
      dtype=dtype,
      embedding_init=normal(0.02),
      embedding_metadata=axes('vocab', 'embed'),
      rngs=rngs,
    )
    if cfg.position == 'learned':
      self.wpe = nnx.Embed(
        cfg.block_size,
        cfg.n_embd,
        dtype=dtype,
        embedding_init=normal(0.02),
        embedding_metadata=axes(None, 'embed'),
        rngs=rngs,
      )
    self.dropout = nnx.Dropout(cfg.dropout)
    self.blocks = make_blocks(cfg, lambda rngs: Block(cfg, rngs=rngs), rngs)
    self.ln_f = layer_norm(cfg, rngs)

  def _embed(self, tokens, positions):
    """Token embeddings (B, T, C), plus learned positions (RoPE adds its own in attention)."""
    x = self.wte(tokens)
    return x + self.wpe(positions) if self.cfg.position == 'learned' else x

  def __call__(self, tokens, *, segment_ids=None, positions=None, rngs: nnx.Rngs | None = None):
    """Next-token logits (B, T, V) in fp32 for tokens (B, T); dropout only when `rngs` is given.

    Packed documents: `segment_ids` (B, T) keep attention within each document, `positions`
    (B, T) count from each document's start (default 0..T-1).
    """
    x = self.hidden(tokens, segment_ids=segment_ids, positions=positions, rngs=rngs)
    return tied_logits(self.wte, x)

  def decode(self, tokens, cache: KVCache):
    """Logits (B, T, V) in fp32 for `tokens` (B, T) in the cache's next T slots, and the cache
    holding them: one call on an empty cache is the prefill (left-padded prompts), then one
    call per generated token. Positions count from each row's start and must stay below
    block_size."""
    slots = cache.index + jnp.arange(tokens.shape[1])[None]  # (1, T)
    positions = jnp.maximum(slots - cache.starts[:, None], 0)  # (B, T); padding gets 0
    x = self._embed(tokens, positions)
    if self.cfg.scan_layers:  # the cache is carried whole; each layer updates its own slice
      graphdef = nnx.graphdef(self.blocks)

      def layer(carry, xs):
        (x, cache), (block_state, i) = carry, xs
        return nnx.merge(graphdef, block_state).decode(x, positions, cache, i), None

      layers = (nnx.state(self.blocks), jnp.arange(self.cfg.n_layer))
      (x, cache), _ = jax.lax.scan(layer, (x, cache), layers)
    else:
      for i, block in enumerate(self.blocks):
        x, cache = block.decode(x, positions, cache, i)
    logits = tied_logits(self.wte, self.ln_f(x))
    return logits, cache._replace(index=cache.index + tokens.shape[1])

  def hidden(self, tokens, *, segment_ids=None, positions=None, rngs: nnx.Rngs | None = None):
    """The final hidden states (B, T, C), after the last LayerNorm."""
    if positions is None:
      positions = jnp.arange(tokens.shape[1])[None]  # (1, T): broadcast, not gathered per row
    x = self.dropout(self._embed(tokens, positions), deterministic=rngs is None, rngs=rngs)
    x = apply_blocks(self.cfg, self.blocks, x, positions, segment_ids, rngs=rngs)
    return self.ln_f(x)
