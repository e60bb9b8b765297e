"""Checkpoints across layer layouts: a state saved with its blocks as a list of layers restores
into a model with `scan_layers` (blocks stacked on a leading 'layers' axis), and back.

Both layouts hold the same numbers: layer l of the list is index l of the stack, for the
parameters and for every optimizer moment that mirrors them. So `model.scan_layers` may change
between a run and its resume, `ckpt.init_from`, export or evaluation. A checkpoint is restored in
the layout its saved config names, then restacked in one jitted call that places every array as
the target's sharding says.
"""

import dataclasses

import jax
import jax.numpy as jnp

from llm_jax import checkpoint

BLOCKS = 'blocks'  # the models' name for their layers (layers.make_blocks)


def stacked(saved_config: dict) -> bool:
  """Whether a checkpoint saved with `saved_config` (its config as JSON) stacks its layers."""
  return bool(saved_config.get('model', {}).get('scan_layers', False))


def _key(entry) -> str:
  """One entry of a key path as text: a dict key, an attribute name or a sequence index."""
  for field in ('key', 'name', 'idx'):
    if hasattr(entry, field):
      return str(getattr(entry, field))
  return str(entry)


def _flat(tree):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return [tuple(map(_key, path)) for path, _ in leaves], [leaf for _, leaf in leaves], treedef


def _sources(path: tuple, layers: int):
  """The paths in the other layout that make up the leaf at `path`, and how to combine them."""
  if BLOCKS not in path:
    return [path], lambda xs: xs[0]
  i = path.index(BLOCKS) + 1
  if path[i].isdigit():  # one layer of a list: its slice of the stacked array
    return [path[:i] + path[i + 1 :]], lambda xs: xs[0][int(path[i])]
  return [path[:i] + (str(layer),) + path[i:] for layer in range(layers)], jnp.stack


def restack(state, target):
  """`state` in the layer layout of `target`, a tree of ShapeDtypeStructs with shardings."""
  source_paths, source_leaves, _ = _flat(state)
  index = {path: i for i, path in enumerate(source_paths)}
  target_paths, target_leaves, treedef = _flat(target)
  plan = []
  for path, leaf in zip(target_paths, target_leaves, strict=True):
    paths, combine = _sources(path, leaf.shape[0] if leaf.shape else 0)
    missing = [p for p in paths if p not in index]
    if missing:
      raise checkpoint.CheckpointError(
        f'checkpoint has no {"/".join(missing[0])} to restack into {"/".join(path)}'
      )
    plan.append(([index[p] for p in paths], combine))

  def build(leaves):
    return [combine([leaves[i] for i in sources]) for sources, combine in plan]

  shardings = [leaf.sharding for leaf in target_leaves]
  return treedef.unflatten(jax.jit(build, out_shardings=shardings)(source_leaves))


def restore(ckpt, step: int, target, model_cfg, target_for, restore_fn):
  """`restore_fn(step, target)` for the checkpoint at `step`, whichever layer layout it was
  saved in, in the layout of `model_cfg`, whose restore target (ShapeDtypeStructs with
  shardings) `target` is. `target_for(model_cfg)` builds the target of the other layout, only
  when the checkpoint has it."""
  saved_stacked = stacked(ckpt.saved_config(step))
  if saved_stacked == model_cfg.scan_layers:
    return restore_fn(step, target)
  other = target_for(dataclasses.replace(model_cfg, scan_layers=saved_stacked))
  return restack(restore_fn(step, other), target)
