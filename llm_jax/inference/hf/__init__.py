"""Hugging Face interop for GPT-2 and BERT: `llm-jax hf import` and `llm-jax hf export`.

Import reads a local `GPT2LMHeadModel` or `BertForMaskedLM` directory (config.json,
model.safetensors or pytorch_model.bin, and vocab.json + merges.txt or vocab.txt) into a
params-only run directory that `sample`, `eval`, `export` and `ckpt.init_from` load like any
other. Export writes a run back as config.json + model.safetensors (+ the tokenizer when it is
one transformers can read: GPT-2's, a trained byte-level BPE, or a WordPiece vocabulary).

The weights map one to one, through one table per family (`gpt2.py`, `bert.py`) read in both
directions: each entry names an HF tensor (or, for BERT's fused qkv, three), our parameter's
path, and the pair of functions between their layouts; `{i}` stands for the layer. GPT-2's
Conv1D weights are (in, out), as ours, and its fused qkv (d, 3d) splits into
(d, 3, heads, head_dim). BERT's Linear weights are (out, in) and transposed.
Imported vocabularies are not padded: a padded id would get logit 0, far above GPT-2's typical
logits, and change every probability. safetensors files are read and written without torch;
pytorch_model.bin needs torch (`pip install 'llm_jax[hf]'`).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from llm_jax import checkpoint, config, rundir, storage
from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.errors import MissingFile, UserError
from llm_jax.inference.export import save_params_run
from llm_jax.inference.hf import bert, gpt2
from llm_jax.inference.hf.table import params_from_weights, weights_from_params
from llm_jax.inference.load import load_model
from llm_jax.models import registry
from llm_jax.train import tasks

# The family module of each HF model_type (import) and of each of our model.name (export).
FAMILIES = {family.MODEL_TYPE: family for family in (gpt2, bert)}
_BY_MODEL = {family.MODEL: family for family in FAMILIES.values()}


class HFError(UserError, ValueError):
  """A Hugging Face directory or run this interop cannot convert; the message says why."""


def _read_config(src) -> dict:
  path = storage.path(src) / 'config.json'
  if not path.exists():
    raise MissingFile(f'{path} not found: is {src} a Hugging Face model directory?')
  hf = json.loads(path.read_text())
  kind, archs = hf.get('model_type'), hf.get('architectures') or []
  family = FAMILIES.get(kind)
  if family is None or any(a not in family.ARCHITECTURES for a in archs):
    read = ' and '.join(f'{f.NAME} ({f.ARCHITECTURES[0]})' for f in FAMILIES.values())
    raise HFError(f'{src}: model_type={kind!r}, architectures={archs}; hf import reads {read}')
  for key, allowed in family.REQUIRED.items():
    if key in hf and hf[key] not in allowed:
      raise HFError(f'{src}: config.json has {key}={hf[key]!r}; supported: {allowed}')
  key, epsilon = family.EPSILON
  if abs(hf.get(key, epsilon) - epsilon) > epsilon * 1e-3:
    raise HFError(f'{src}: {key}={hf[key]}; supported: {epsilon}')
  return hf


def _read_weights(src) -> dict[str, np.ndarray]:
  """Name (without a family's PREFIX) -> fp32 array from model.safetensors, else
  pytorch_model.bin."""
  directory = storage.path(src)
  if (directory / 'model.safetensors').exists():
    from safetensors.numpy import load

    weights = load((directory / 'model.safetensors').read_bytes())
  elif (directory / 'pytorch_model.bin').exists():
    import torch

    state = torch.load(str(directory / 'pytorch_model.bin'), map_location='cpu', weights_only=True)
    weights = {k: v.float().numpy() for k, v in state.items()}
  else:
    raise MissingFile(f'{src}: neither model.safetensors nor pytorch_model.bin found')
  return {_strip(k): np.asarray(v, np.float32) for k, v in weights.items()}


def _strip(name: str) -> str:
  for family in FAMILIES.values():
    name = name.removeprefix(family.PREFIX)
  return name


def _mlp_ratio(src, width: int, d: int) -> int:
  if width % d:
    raise HFError(f'{src}: an MLP width of {width} is not a multiple of {d}')
  return width // d


def _model_section(family, hf: dict, src) -> dict:
  """`model.*` settings of our config for an HF config."""
  section = family.model_section(hf)
  return dict(section, mlp_ratio=_mlp_ratio(src, family.mlp_width(hf), section['n_embd']))


def _lookup(weights: dict, src):
  def w(name):
    if name not in weights:
      raise HFError(f'{src}: the weights lack {name}')
    return weights[name]

  return w


def import_model(src, workdir, *, force: bool = False) -> int:
  """Writes the GPT-2 or BERT in `src` as a params-only run in `workdir`; returns its parameter
  count. A `workdir` that is not empty is refused, unless `force`: then its checkpoints are
  moved aside (`checkpoints.replaced-TIME`), so the imported step is the run's only one."""
  out = storage.path(workdir)
  if out.exists() and any(out.iterdir()) and not force:
    raise HFError(f'hf import --workdir {workdir} is not empty; --force imports into it anyway')
  hf = _read_config(src)
  family = FAMILIES[hf['model_type']]
  tok = family.read_tokenizer(src)
  cfg = config.base_config()
  cfg.model.update(_model_section(family, hf, src))
  cfg.data.update(seq_len=cfg.model.block_size, tokenizer=f'{family.TOKENIZER}:{src}')
  model_cfg = tasks.run_model_config(cfg, tok)
  params = nnx.state(nnx.eval_shape(lambda: registry.build(model_cfg, 0)), nnx.Param)
  pure = params_from_weights(family, cfg.model, _lookup(_read_weights(src), src))
  expected, got = (jax.tree.map(np.shape, p) for p in (nnx.to_pure_dict(params), pure))
  if expected != got:
    raise HFError(f'{src}: parameter shapes differ from the model its config.json describes')
  nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, pure))
  _write_run(out, cfg, tok, params)
  return sum(np.size(v) for v in jax.tree.leaves(pure))


def _write_run(out: epath.Path, cfg, tok, params) -> None:
  """A params-only run in `out`: config.json, tokenizer.json and step 0's checkpoint."""
  out.mkdir(parents=True, exist_ok=True)
  checkpoint.move_aside(out, 'replaced')
  save_params_run(out, cfg.to_json_best_effort(indent=2), cfg.ckpt, 0, params)
  rundir.write_tokenizer(out, tok)


def _check_exportable(cfg) -> None:
  """HFError unless `cfg` describes a model GPT2LMHeadModel or BertForMaskedLM can hold."""
  m = cfg.model
  classify = cfg.train.task == 'classify'  # the default task, '', is the family's pretraining
  problems = [
    (classify, f'a {m.name} classifier (hf export writes GPT-2 and BertForMaskedLM)'),
    (m.position != 'learned', 'model.position=rope (GPT-2 and BERT use learned positions)'),
    (not m.bias, 'model.bias=False'),
    (m.name == 'bert' and m.norm != 'post', 'model.norm=pre (BERT is post-LN)'),
  ]
  for bad, what in problems:
    if bad:
      raise HFError(f'hf export cannot write this run: it has {what}')


def export_model(workdir, dst) -> epath.Path:
  """Writes `workdir`'s newest GPT or BERT as a GPT2LMHeadModel / BertForMaskedLM in `dst`."""
  run = load_model(workdir, what='hf export --workdir')
  _check_exportable(run.cfg)
  family = _BY_MODEL[run.cfg.model.name]
  pure = jax.tree.map(np.asarray, nnx.to_pure_dict(run.params))
  weights = weights_from_params(family, run.cfg.model, pure)
  hf = family.hf_config(run.cfg.model, weights, run.tokenizer)
  from safetensors.numpy import save

  out = storage.path(dst)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'config.json').write_text(json.dumps(hf, indent=2) + '\n')
  prefixed = lambda name: name if name.startswith(family.UNPREFIXED) else family.PREFIX + name
  tensors = {prefixed(k): np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
  (out / 'model.safetensors').write_bytes(save(tensors, metadata={'format': 'pt'}))
  if isinstance(run.tokenizer, tokenizer_lib.HFTokenizer):
    run.tokenizer.save_hf(out)
  return out
