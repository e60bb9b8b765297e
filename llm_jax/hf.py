"""Hugging Face interop for GPT-2 and BERT: `llm-jax hf import` and `llm-jax hf export`.

Import reads a local `GPT2LMHeadModel` or `BertForMaskedLM` directory (config.json,
model.safetensors or pytorch_model.bin, and vocab.json + merges.txt or vocab.txt) into a
params-only run directory that `sample`, `eval`, `export` and `ckpt.init_from` load like any
other. Export writes a run back as config.json + model.safetensors (+ the tokenizer when it is
one transformers can read: GPT-2's, a trained byte-level BPE, or a WordPiece vocabulary).

The weights map one to one. GPT-2's Conv1D weights are (in, out), as ours, and its fused qkv
(d, 3d) splits into (d, 3, heads, head_dim). BERT's Linear weights are (out, in) and transposed.
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

from llm_jax import checkpoint, config, models, storage
from llm_jax.data import TOKENIZER_FILE
from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.train import loop, tasks


class HFError(ValueError):
  """A Hugging Face directory or run this interop cannot convert; the message says why."""


# Per model_type: the architectures we read, config values the model implements (anything else
# would import silently wrong), and its LayerNorm epsilon.
FAMILIES = {
  'gpt2': dict(
    architectures=('GPT2LMHeadModel', 'GPT2Model'),
    required={
      'activation_function': ('gelu_new', 'gelu_pytorch_tanh'),
      'scale_attn_weights': (True,),
      'scale_attn_by_inverse_layer_idx': (False,),
      'reorder_and_upcast_attn': (False,),
      'add_cross_attention': (False,),
    },
    epsilon=('layer_norm_epsilon', 1e-5),
  ),
  'bert': dict(
    architectures=('BertForMaskedLM',),
    required={
      'hidden_act': ('gelu',),
      'position_embedding_type': ('absolute',),
      'is_decoder': (False,),
      'add_cross_attention': (False,),
    },
    epsilon=('layer_norm_eps', 1e-12),
  ),
}


def _read_config(src) -> dict:
  path = storage.path(src) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: is {src} a Hugging Face model directory?')
  hf = json.loads(path.read_text())
  kind, archs = hf.get('model_type'), hf.get('architectures') or []
  family = FAMILIES.get(kind)
  if family is None or any(a not in family['architectures'] for a in archs):
    raise HFError(
      f'{src}: model_type={kind!r}, architectures={archs}; hf import reads GPT-2'
      ' (GPT2LMHeadModel) and BERT (BertForMaskedLM)'
    )
  for key, allowed in family['required'].items():
    if key in hf and hf[key] not in allowed:
      raise HFError(f'{src}: config.json has {key}={hf[key]!r}; supported: {allowed}')
  key, epsilon = family['epsilon']
  if abs(hf.get(key, epsilon) - epsilon) > epsilon * 1e-3:
    raise HFError(f'{src}: {key}={hf[key]}; supported: {epsilon}')
  return hf


def _read_weights(src) -> dict[str, np.ndarray]:
  """Name -> fp32 array from model.safetensors, else pytorch_model.bin."""
  directory = storage.path(src)
  if (directory / 'model.safetensors').exists():
    from safetensors.numpy import load

    weights = load((directory / 'model.safetensors').read_bytes())
  elif (directory / 'pytorch_model.bin').exists():
    import torch

    state = torch.load(str(directory / 'pytorch_model.bin'), map_location='cpu', weights_only=True)
    weights = {k: v.float().numpy() for k, v in state.items()}
  else:
    raise FileNotFoundError(f'{src}: neither model.safetensors nor pytorch_model.bin found')
  strip = lambda k: k.removeprefix('transformer.').removeprefix('bert.')
  return {strip(k): np.asarray(v, np.float32) for k, v in weights.items()}


def _norm(w, name: str) -> dict:
  return {'scale': w(f'{name}.weight'), 'bias': w(f'{name}.bias')}


def gpt2_params(hf: dict, w) -> dict:
  """Our GPT's parameters (a pure dict) from GPT-2 weights `w(name)`."""
  d, n = hf['n_embd'], hf['n_head']
  linear = lambda name, shape, bias_shape: {
    'kernel': w(f'{name}.weight').reshape(shape),
    'bias': w(f'{name}.bias').reshape(bias_shape),
  }
  block = lambda p: {
    'ln_1': _norm(w, f'{p}.ln_1'),
    'attn': {
      'qkv': linear(f'{p}.attn.c_attn', (d, 3, n, d // n), (3, n, d // n)),
      'proj': linear(f'{p}.attn.c_proj', (n, d // n, d), (d,)),
    },
    'ln_2': _norm(w, f'{p}.ln_2'),
    'mlp': {
      'fc': linear(f'{p}.mlp.c_fc', (d, -1), (-1,)),
      'proj': linear(f'{p}.mlp.c_proj', (-1, d), (d,)),
    },
  }
  return {
    'wte': {'embedding': w('wte.weight')},
    'wpe': {'embedding': w('wpe.weight')},
    'blocks': {i: block(f'h.{i}') for i in range(hf['n_layer'])},
    'ln_f': _norm(w, 'ln_f'),
  }


def bert_params(hf: dict, w) -> dict:
  """Our BERT's parameters (a pure dict) from BertForMaskedLM weights `w(name)`."""
  d, n = hf['hidden_size'], hf['num_attention_heads']
  t = lambda name: w(f'{name}.weight').T  # torch Linear: (out, in)
  dense = lambda name: {'kernel': t(name), 'bias': w(f'{name}.bias')}

  def block(p):
    qkv = [f'{p}.attention.self.{x}' for x in ('query', 'key', 'value')]
    return {
      'attn': {
        'qkv': {
          'kernel': np.stack([t(x).reshape(d, n, d // n) for x in qkv], axis=1),
          'bias': np.stack([w(f'{x}.bias').reshape(n, d // n) for x in qkv]),
        },
        'proj': {
          'kernel': t(f'{p}.attention.output.dense').reshape(n, d // n, d),
          'bias': w(f'{p}.attention.output.dense.bias'),
        },
      },
      'ln_1': _norm(w, f'{p}.attention.output.LayerNorm'),
      'mlp': {'fc': dense(f'{p}.intermediate.dense'), 'proj': dense(f'{p}.output.dense')},
      'ln_2': _norm(w, f'{p}.output.LayerNorm'),
    }

  return {
    'encoder': {
      'wte': {'embedding': w('embeddings.word_embeddings.weight')},
      'wpe': {'embedding': w('embeddings.position_embeddings.weight')},
      'wtt': {'embedding': w('embeddings.token_type_embeddings.weight')},
      'ln_emb': _norm(w, 'embeddings.LayerNorm'),
      'blocks': {i: block(f'encoder.layer.{i}') for i in range(hf['num_hidden_layers'])},
    },
    'mlm_dense': dense('cls.predictions.transform.dense'),
    'mlm_ln': _norm(w, 'cls.predictions.transform.LayerNorm'),
    'mlm_bias': w('cls.predictions.bias'),
  }


def _mlp_ratio(src, width: int, d: int) -> int:
  if width % d:
    raise HFError(f'{src}: an MLP width of {width} is not a multiple of {d}')
  return width // d


def _model_section(hf: dict, src) -> dict:
  """`model.*` settings of our config for an HF config."""
  if hf['model_type'] == 'gpt2':
    d = hf['n_embd']
    return dict(
      name='gpt', vocab_size=hf['vocab_size'], block_size=hf['n_positions'],
      n_layer=hf['n_layer'], n_head=hf['n_head'], n_embd=d,
      mlp_ratio=_mlp_ratio(src, hf.get('n_inner') or 4 * d, d),
    )  # fmt: skip
  d = hf['hidden_size']
  return dict(
    name='bert', vocab_size=hf['vocab_size'], block_size=hf['max_position_embeddings'],
    n_layer=hf['num_hidden_layers'], n_head=hf['num_attention_heads'], n_embd=d,
    mlp_ratio=_mlp_ratio(src, hf['intermediate_size'], d),
    type_vocab_size=hf['type_vocab_size'], dropout=hf.get('hidden_dropout_prob', 0.1),
    norm='post',
  )  # fmt: skip


def import_model(src, workdir, *, force: bool = False) -> int:
  """Writes the GPT-2 or BERT in `src` as a params-only run in `workdir`; returns its parameter
  count. A `workdir` that is not empty is refused, unless `force`: then its checkpoints are
  moved aside (`checkpoints.replaced-TIME`), so the imported step is the run's only one."""
  out = storage.path(workdir)
  if out.exists() and any(out.iterdir()) and not force:
    raise HFError(f'hf import --workdir {workdir} is not empty; --force imports into it anyway')
  hf = _read_config(src)
  bert = hf['model_type'] == 'bert'
  kind = 'wordpiece' if bert else 'gpt2'
  tok = (tokenizer_lib.HFTokenizer.wordpiece if bert else tokenizer_lib.HFTokenizer.gpt2)(str(src))
  cfg = config.base_config()
  cfg.model.update(_model_section(hf, src))
  cfg.data.update(seq_len=cfg.model.block_size, tokenizer=f'{kind}:{src}')
  model_cfg = tasks.run_model_config(cfg, tok)
  params = nnx.state(nnx.eval_shape(lambda: models.build(model_cfg, 0)), nnx.Param)
  weights = _read_weights(src)

  def w(name):
    if name not in weights:
      raise HFError(f'{src}: the weights lack {name}')
    return weights[name]

  pure = (bert_params if bert else gpt2_params)(hf, w)
  expected, got = (jax.tree.map(np.shape, p) for p in (nnx.to_pure_dict(params), pure))
  if expected != got:
    raise HFError(f'{src}: parameter shapes differ from the model its config.json describes')
  nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, pure))
  out.mkdir(parents=True, exist_ok=True)
  checkpoint.move_aside(out, 'replaced')
  config_json = cfg.to_json_best_effort(indent=2)
  (out / config.CONFIG_FILE).write_text(config_json + '\n')
  tok.save(out / TOKENIZER_FILE)
  saver = checkpoint.Checkpointer(out, cfg.ckpt, config_json)
  saver.save_params(0, params)
  saver.close()
  return sum(np.size(v) for v in jax.tree.leaves(pure))


def _check_exportable(cfg) -> None:
  m, task = cfg.model, config.task_name(cfg)
  problems = [
    (task == 'classify', f'a {m.name} classifier (hf export writes GPT-2 and BertForMaskedLM)'),
    (m.position != 'learned', 'model.position=rope (GPT-2 and BERT use learned positions)'),
    (not m.bias, 'model.bias=False'),
    (m.name == 'bert' and m.norm != 'post', 'model.norm=pre (BERT is post-LN)'),
  ]
  for bad, what in problems:
    if bad:
      raise HFError(f'hf export cannot write this run: it has {what}')


def _layers(blocks: dict, cfg) -> dict:
  """{layer: parameters}, unstacking scanned layers."""
  if not cfg.model.scan_layers:
    return blocks
  return {i: jax.tree.map(lambda x, i=i: x[i], blocks) for i in range(cfg.model.n_layer)}


def gpt2_weights(pure: dict, cfg) -> tuple[dict, dict]:
  """(GPT2LMHeadModel config, weights) of our GPT's parameters."""
  m, d = cfg.model, cfg.model.n_embd
  weights = {'transformer.wte.weight': pure['wte']['embedding']}
  weights['transformer.wpe.weight'] = pure['wpe']['embedding']
  for i, b in _layers(pure['blocks'], cfg).items():
    p = f'transformer.h.{i}.'
    weights.update({
      p + 'ln_1.weight': b['ln_1']['scale'], p + 'ln_1.bias': b['ln_1']['bias'],
      p + 'attn.c_attn.weight': b['attn']['qkv']['kernel'].reshape(d, 3 * d),
      p + 'attn.c_attn.bias': b['attn']['qkv']['bias'].reshape(3 * d),
      p + 'attn.c_proj.weight': b['attn']['proj']['kernel'].reshape(d, d),
      p + 'attn.c_proj.bias': b['attn']['proj']['bias'],
      p + 'ln_2.weight': b['ln_2']['scale'], p + 'ln_2.bias': b['ln_2']['bias'],
      p + 'mlp.c_fc.weight': b['mlp']['fc']['kernel'], p + 'mlp.c_fc.bias': b['mlp']['fc']['bias'],
      p + 'mlp.c_proj.weight': b['mlp']['proj']['kernel'],
      p + 'mlp.c_proj.bias': b['mlp']['proj']['bias'],
    })  # fmt: skip
  weights['transformer.ln_f.weight'] = pure['ln_f']['scale']
  weights['transformer.ln_f.bias'] = pure['ln_f']['bias']
  hf = {
    'model_type': 'gpt2',
    'architectures': ['GPT2LMHeadModel'],
    'vocab_size': pure['wte']['embedding'].shape[0],  # padding included: logits match id for id
    'n_positions': m.block_size,
    'n_embd': d,
    'n_layer': m.n_layer,
    'n_head': m.n_head,
    'n_inner': m.mlp_ratio * d,
    'activation_function': 'gelu_new',
    'layer_norm_epsilon': 1e-5,
    'tie_word_embeddings': True,
  }
  return hf, weights


def bert_weights(pure: dict, cfg) -> tuple[dict, dict]:
  """(BertForMaskedLM config, weights) of our BERT's parameters."""
  m, d = cfg.model, cfg.model.n_embd
  t = lambda kernel: kernel.reshape(-1, kernel.shape[-1]).T  # to torch Linear's (out, in)
  norm = lambda name, ln: {f'{name}.weight': ln['scale'], f'{name}.bias': ln['bias']}
  dense = lambda name, p: {f'{name}.weight': t(p['kernel']), f'{name}.bias': p['bias']}
  enc = pure['encoder']
  weights = {
    'bert.embeddings.word_embeddings.weight': enc['wte']['embedding'],
    'bert.embeddings.position_embeddings.weight': enc['wpe']['embedding'],
    'bert.embeddings.token_type_embeddings.weight': enc['wtt']['embedding'],
    **norm('bert.embeddings.LayerNorm', enc['ln_emb']),
    **dense('cls.predictions.transform.dense', pure['mlm_dense']),
    **norm('cls.predictions.transform.LayerNorm', pure['mlm_ln']),
    'cls.predictions.bias': pure['mlm_bias'],
  }
  for i, b in _layers(enc['blocks'], cfg).items():
    p = f'bert.encoder.layer.{i}.'
    qkv = b['attn']['qkv']
    for j, x in enumerate(('query', 'key', 'value')):
      weights[f'{p}attention.self.{x}.weight'] = qkv['kernel'][:, j].reshape(d, d).T
      weights[f'{p}attention.self.{x}.bias'] = qkv['bias'][j].reshape(d)
    weights.update({
      **dense(p + 'attention.output.dense', b['attn']['proj']),
      **norm(p + 'attention.output.LayerNorm', b['ln_1']),
      **dense(p + 'intermediate.dense', b['mlp']['fc']),
      **dense(p + 'output.dense', b['mlp']['proj']),
      **norm(p + 'output.LayerNorm', b['ln_2']),
    })  # fmt: skip
  hf = {
    'model_type': 'bert',
    'architectures': ['BertForMaskedLM'],
    'vocab_size': enc['wte']['embedding'].shape[0],
    'hidden_size': d,
    'num_hidden_layers': m.n_layer,
    'num_attention_heads': m.n_head,
    'intermediate_size': m.mlp_ratio * d,
    'hidden_act': 'gelu',
    'max_position_embeddings': m.block_size,
    'type_vocab_size': m.type_vocab_size,
    'layer_norm_eps': 1e-12,
    'position_embedding_type': 'absolute',
    'hidden_dropout_prob': m.dropout,
    'attention_probs_dropout_prob': 0.0,  # our attention has no dropout
    'tie_word_embeddings': True,
  }
  return hf, weights


def export_model(workdir, dst) -> epath.Path:
  """Writes `workdir`'s newest GPT or BERT as a GPT2LMHeadModel / BertForMaskedLM in `dst`."""
  run = loop.load_model(workdir, what='hf export --workdir')
  _check_exportable(run.cfg)
  pure = jax.tree.map(np.asarray, nnx.to_pure_dict(run.params))
  to_hf = bert_weights if run.cfg.model.name == 'bert' else gpt2_weights
  hf, weights = to_hf(pure, run.cfg)
  if run.cfg.model.name == 'gpt':
    hf.update(bos_token_id=run.tokenizer.eos_id, eos_token_id=run.tokenizer.eos_id)
  from safetensors.numpy import save

  out = storage.path(dst)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'config.json').write_text(json.dumps(hf, indent=2) + '\n')
  tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
  (out / 'model.safetensors').write_bytes(save(tensors, metadata={'format': 'pt'}))
  if isinstance(run.tokenizer, tokenizer_lib.HFTokenizer):
    run.tokenizer.save_hf(out)
  return out
