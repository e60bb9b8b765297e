"""A sequence classifier on a pretrained backbone: BERT's encoder or a GPT.

BERT pools the [CLS] position (first token) through a dense tanh layer, as in the original; GPT
pools its last real token, the only position that has seen the whole passage under causal
attention. A dropout and a linear layer then give the class logits.
"""

import jax.numpy as jnp
from flax import nnx

from llm_jax.models.bert import Encoder
from llm_jax.models.configs import BERTConfig, ClassifierConfig
from llm_jax.models.gpt import GPT
from llm_jax.models.layers import DTYPES, axes, normal


class Classifier(nnx.Module):
  def __init__(self, cfg: ClassifierConfig, *, rngs: nnx.Rngs):
    b = cfg.backbone
    linear = lambda n_in, n_out, names: nnx.Linear(
      n_in, n_out, dtype=DTYPES[b.dtype], kernel_init=normal(0.02),
      kernel_metadata=axes(*names), bias_metadata=axes(names[1]), rngs=rngs,
    )  # fmt: skip
    self.encoder_pooling = isinstance(b, BERTConfig)
    if self.encoder_pooling:
      self.backbone = Encoder(b, rngs=rngs)
      self.pooler = linear(b.n_embd, b.n_embd, ('embed', None))
    else:
      self.backbone = GPT(b, rngs=rngs)
    self.dropout = nnx.Dropout(b.dropout)
    self.head = linear(b.n_embd, cfg.num_classes, ('embed', None))

  def __call__(self, tokens, lengths, *, rngs: nnx.Rngs | None = None):
    """Class logits (B, C) in fp32 for right-padded tokens (B, T) of `lengths` (B,)."""
    if self.encoder_pooling:
      h = jnp.tanh(self.pooler(self.backbone(tokens, lengths=lengths, rngs=rngs)[:, 0]))
    else:
      hidden = self.backbone.hidden(tokens, rngs=rngs)  # (B, T, C)
      h = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    h = self.dropout(h, deterministic=rngs is None, rngs=rngs)
    return self.head(h).astype(jnp.float32)


def backbone_params(pretrained_params, model_cfg):
  """The part of a pretrained model's parameters that a Classifier's `backbone` holds."""
  return pretrained_params['encoder'] if isinstance(model_cfg, BERTConfig) else pretrained_params
