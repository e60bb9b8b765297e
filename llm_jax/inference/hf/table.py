"""What a family's table is made of, and the walk that reads one both ways.

A table is a list of entries `(hf_name, our_path, to_ours, to_hf)`: HF's tensor name (or a tuple of
names that make up one of ours), our parameter's dotted path, and the pair of functions between
the two layouts, given once so that import and export cannot disagree. `{i}` in a name or path
stands for the layer index.
"""

import itertools

import numpy as np

LAYER = '{i}'  # the layer index in a table's names and paths


def same():
  """(to_ours, to_hf) for a tensor both sides hold alike."""
  return (lambda x: x), (lambda x: x)


def reshaped(ours: tuple, hf: tuple):
  """(to_ours, to_hf) between HF's shape `hf` and our `ours` of the same values."""
  return (lambda x: x.reshape(ours)), (lambda x: x.reshape(hf))


def transposed(ours: tuple | None = None, hf: tuple | None = None):
  """(to_ours, to_hf) between a Linear weight (out, in) and our kernel (in, out), reshaped to
  `ours` and back to `hf` when given."""
  if ours is None:
    return (lambda x: x.T), (lambda x: x.T)
  return (lambda x: x.T.reshape(ours)), (lambda x: x.reshape(hf[::-1]).T)


def norm(hf: str, ours: str) -> list:
  """The entries of a LayerNorm: HF's weight and bias, our scale and bias."""
  return [(f'{hf}.weight', f'{ours}.scale', *same()), (f'{hf}.bias', f'{ours}.bias', *same())]


def entries(family, m):
  """The family's table for `model` section `m`, with `{i}` filled in, layer by layer (the order
  HF lists them): (HF names, our path as keys, to_ours(*HF tensors), to_hf(ours) -> HF tensors)."""
  for layered, run in itertools.groupby(family.table(m), key=lambda entry: LAYER in entry[1]):
    run = list(run)
    for i in range(m.n_layer) if layered else [None]:
      at = lambda s, i=i: s if i is None else s.replace(LAYER, str(i))
      for hf, ours, to_ours, to_hf in run:
        if isinstance(hf, str):  # most entries: one HF tensor, to_hf returns it alone
          hf, to_hf = (hf,), lambda y, to_hf=to_hf: (to_hf(y),)
        path = tuple(int(k) if k.isdigit() else k for k in at(ours).split('.'))
        yield tuple(at(name) for name in hf), path, to_ours, to_hf


def params_from_weights(family, m, w) -> dict:
  """Our parameters (a pure dict) of `model` section `m` from HF weights `w(name)`."""
  pure = {}
  for names, path, to_ours, _ in entries(family, m):
    node = pure
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = to_ours(*(w(n) for n in names))
  return pure


def weights_from_params(family, m, pure: dict) -> dict[str, np.ndarray]:
  """HF name (without PREFIX) -> array of our parameters `pure`, listed or (m.scan_layers)
  stacked on a leading layer axis."""
  weights = {}
  for names, path, _, to_hf in entries(family, m):
    node, layer = pure, None
    for key in path:
      if isinstance(key, int) and m.scan_layers:
        layer = key  # scanned blocks hold every layer in each leaf
      else:
        node = node[key]
    weights.update(zip(names, to_hf(node if layer is None else node[layer]), strict=True))
  return weights
