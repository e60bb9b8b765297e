"""Which module each model config builds, and a model's parameter layout on a mesh."""

import jax
from flax import nnx

from llm_jax import sharding
from llm_jax.models.bert import BERT
from llm_jax.models.classifier import Classifier
from llm_jax.models.configs import BERTConfig, ClassifierConfig, GPTConfig
from llm_jax.models.gpt import GPT

MODULES = {GPTConfig: GPT, BERTConfig: BERT, ClassifierConfig: Classifier}


def build(cfg, seed: int) -> nnx.Module:
  """A model with initialised parameters.

  Eager sharding stays off: parameters carry logical names only, which `llm_jax.sharding`
  resolves to mesh axes when the training state is placed.
  """
  with nnx.use_eager_sharding(False):
    return MODULES[type(cfg)](cfg, rngs=nnx.Rngs(params=seed))


def param_layout(model_cfg, mesh, rules):
  """(graphdef, abstract params, their shardings) of a model, nothing allocated."""
  graphdef, abstract_params = nnx.split(nnx.eval_shape(lambda: build(model_cfg, 0)), nnx.Param)
  logical = nnx.get_partition_spec(abstract_params)
  sharding.check_divisible(logical, abstract_params, mesh, rules)
  return graphdef, abstract_params, sharding.tree_shardings(logical, mesh, rules)


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs of `abstract` that carry `shardings`."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


def abstract_params(model_cfg, mesh, rules):
  """A model's parameters as ShapeDtypeStructs carrying their shardings: a restore target."""
  _, abstract, shardings = param_layout(model_cfg, mesh, rules)
  return with_shardings(abstract, shardings)
