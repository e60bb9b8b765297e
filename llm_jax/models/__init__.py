"""Model registry: config section `model` -> an NNX module."""

import dataclasses

from flax import nnx

from llm_jax.models.bert import BERT, BERTConfig
from llm_jax.models.classifier import Classifier, ClassifierConfig
from llm_jax.models.gpt import GPT, GPTConfig

# Pretraining models by `model.name`; a classifier wraps one of them for fine-tuning.
MODELS = {'gpt': (GPT, GPTConfig), 'bert': (BERT, BERTConfig)}
_MODULES = {GPTConfig: GPT, BERTConfig: BERT, ClassifierConfig: Classifier}
# A vocabulary taken from the tokenizer is padded to this multiple: fast matmuls, and a vocab axis
# that divides over tensor-parallel meshes. Padded ids never occur in data or samples.
VOCAB_MULTIPLE = 128


def model_config(model_cfg, vocab_size: int):
  """The model's frozen dataclass config from the `model` config section."""
  _, config_cls = MODELS[model_cfg.name]
  fields = {f.name for f in dataclasses.fields(config_cls)}
  values = {k: v for k, v in model_cfg.items() if k in fields}
  values['vocab_size'] = model_cfg.vocab_size or -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
  return config_cls(**values)


def build(cfg, seed: int) -> nnx.Module:
  """A model with initialised parameters.

  Eager sharding stays off: parameters carry logical names only, which `llm_jax.sharding`
  resolves to mesh axes when the training state is placed.
  """
  with nnx.use_eager_sharding(False):
    return _MODULES[type(cfg)](cfg, rngs=nnx.Rngs(params=seed))
