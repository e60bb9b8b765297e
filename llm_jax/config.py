"""Base defaults, model presets and run-JSON I/O: the one source of truth for configuration.

Config files in `configs/` call `preset(name)` and override what they need; the CLI applies
`--config.a.b=v` overrides on top. This module imports no JAX (loading a config file or
`launch --dry_run` stays light): each section's owner validates it (`models.configs`, `data`,
`sharding`, `distributed`, `train.tasks`, `train.optim`, `inference.generate`), all called from
`llm_jax.validation.validate` before anything is compiled, raising `ConfigError` naming the field.
"""

import importlib.util
import json
import pathlib

import ml_collections
from absl import flags
from ml_collections import config_flags

from llm_jax.errors import ConfigError
from llm_jax.models import configs as model_configs

__all__ = ['ConfigError', 'base_config', 'from_json', 'load', 'load_file', 'preset']

OVERRIDE_PREFIX = '--config.'  # --config.KEY=VALUE on a command line

# Logical axis -> mesh axes (None: replicated); `llm_jax.sharding` applies it, models only name
# logical axes. Batch over data×fsdp; weights' `embed` dimension over fsdp (ZeRO-3: each device
# holds a slice of every parameter and its optimizer state); heads, MLP and vocabulary over
# tensor (Megatron). The residual stream (`act_embed`) stays whole on each device between blocks.
DEFAULT_RULES = (
  ('batch', ('data', 'fsdp')),
  ('length', None),
  ('act_embed', None),
  ('vocab', 'tensor'),
  ('embed', 'fsdp'),
  ('heads', 'tensor'),
  ('kv', None),
  ('mlp', 'tensor'),
  ('layers', None),
)
# MaxText's single-host GPU choices. Latency hiding overlaps collectives and copies with compute;
# GEMMs go to cuBLAS rather than Triton.
GPU_FLAGS = (
  '--xla_gpu_enable_latency_hiding_scheduler=true',
  '--xla_gpu_enable_triton_gemm=false',
)


def base_config() -> ml_collections.ConfigDict:
  """Every key the framework reads, with its default."""
  c = ml_collections.ConfigDict()
  # name: a family of models/configs.py; its fields and their defaults are that file's dataclasses.
  c.model = model_configs.section_defaults()
  # Data: `source` tokenized at start-up, or `path` = shards from `llm-jax prepare` (see
  # llm_jax/data/sources.py for source specs: shakespeare, text:GLOB, jsonl:GLOB, tfds:NAME:SPLIT).
  c.data = dict(
    source='shakespeare',
    path='',
    seq_len=256,
    tokenizer='char',  # char | byte | bpe | gpt2:DIR | wordpiece:DIR | sentencepiece:FILE
    vocab_size=0,  # bpe: the vocabulary to train
    val_fraction=0.05,  # documents held out (the embedded corpus holds out whole plays instead)
    text_field='text',  # jsonl and tfds: the field holding the text
    label_field='label',  # classification: the field holding the label
    classes=(),  # classification: label names ('' = the dataset's own, or those seen in training)
    passage_chars=256,  # genre: characters per passage
    text_documents='blank_line',  # text: documents end at blank lines, or 'file': one per file
    tfds_data_dir='',  # where TFDS datasets are built ('' = TFDS's default)
    segment_ids=False,  # attention and positions restart at each document (EOS)
    prefetch=2,  # batches read and transferred ahead of the step loop (0: none)
  )
  c.train = dict(
    steps=5000,
    batch_size=64,  # global batch per optimizer step, in sequences
    grad_accum_steps=1,
    seed=0,
    log_every=50,
    on_nonfinite='halt',  # a NaN/Inf loss or gradient: 'halt', or 'skip' that update
    task='',  # '' = the model's pretraining objective (gpt: lm, bert: mlm), or 'classify'
    mask_rate=0.15,  # mlm: share of tokens chosen for prediction
    loss_chunk=0,  # lm: positions per cross-entropy chunk (0: whole sequence at once)
  )
  # Held-out batches per evaluation (0: none); classification scores its whole held-out split.
  c.eval = dict(every_steps=500, batches=20, batch_size=64)
  c.optimizer = dict(
    lr=1e-3,
    min_lr_ratio=0.1,  # cosine decays to lr * min_lr_ratio
    warmup_steps=100,
    b1=0.9,
    b2=0.99,
    eps=1e-8,
    weight_decay=0.1,
    clip_norm=1.0,  # 0 disables clipping
  )
  # Axis sizes (-1: all remaining devices); dcn_* = how much of each axis spans slices/hosts.
  c.mesh = dict(
    data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1, rules=DEFAULT_RULES
  )
  # Multi-process runs: set here, or auto-detected on Cloud TPU and under SLURM.
  c.distributed = dict(
    coordinator_address='', num_processes=1, process_id=0, timeout_s=300, auto_detect=True
  )
  # Saved every `every_steps` and at the last step; `keep_period`: keep every Nth forever (0: off).
  # init_from: a workdir or export whose parameters start this run (fine-tuning; fresh optimizer).
  c.ckpt = dict(every_steps=1000, max_to_keep=3, keep_period=0, init_from='')
  # offline needs no account or network; upload later: wandb sync WORKDIR/wandb/offline-run-*
  # The API key comes from the environment only (WANDB_API_KEY or `wandb login`).
  c.wandb = dict(
    mode='offline',
    project='llm_jax',
    entity='',
    group='',
    tags=(),
    name='',  # '' = the workdir's name
    notes='',
    init_timeout_s=30,  # online: how long to wait for the server before going on without it
  )
  c.tensorboard = dict(enabled=False)  # also write WORKDIR/tensorboard (needs [tensorboard])
  # Process-wide XLA settings, applied by the CLI before JAX starts (see llm_jax/runtime.py):
  # gpu_flags join XLA_FLAGS (other backends parse and ignore them; a flag already in XLA_FLAGS
  # wins; '' adds none);
  # cache_dir keeps compiled programs across runs ('' = off).
  c.xla = dict(
    gpu_flags=' '.join(GPU_FLAGS),
    cache_dir='~/.cache/llm_jax/xla',
    cache_min_compile_s=1.0,
  )
  # A JAX profiler trace of `steps` steps, starting `skip` steps after the run (re)starts, into
  # WORKDIR/profile (open with TensorBoard's profile plugin, XProf or Perfetto). 0: off.
  c.profile = dict(steps=0, skip=5)
  c.sample = dict(prompt='\n', max_new_tokens=500, temperature=0.8, top_k=0, top_p=1.0, seed=0)
  return c


MODEL_PRESETS = {
  'gpt_tiny': dict(block_size=64, n_layer=2, n_head=2, n_embd=64),
  # nanoGPT's CPU recipe: trains to ~1.9 nats/char in a few CPU minutes.
  'gpt_shakespeare_cpu': dict(block_size=64, n_layer=4, n_head=4, n_embd=128),
  # nanoGPT's "baby GPT" for character-level Shakespeare on a GPU.
  'gpt_shakespeare': dict(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
  'gpt2_124m': dict(block_size=1024, n_layer=12, n_head=12, n_embd=768),
  'gpt2_350m': dict(block_size=1024, n_layer=24, n_head=16, n_embd=1024),
  'gpt2_774m': dict(block_size=1024, n_layer=36, n_head=20, n_embd=1280),
  'gpt2_1.5b': dict(block_size=1024, n_layer=48, n_head=25, n_embd=1600),
  # Small encoders use RoPE: with learned positions, bert_shakespeare_cpu sat at the unigram
  # loss (3.05 nats, 23% MLM accuracy) for 1,000+ steps; with RoPE it reached 1.89 / 46% by 200.
  'bert_tiny': dict(
    name='bert', block_size=128, n_layer=2, n_head=2, n_embd=64, dropout=0.1, position='rope'
  ),
  # The CPU recipe: gpt_shakespeare_cpu's size as an encoder, ~10 CPU minutes of pretraining.
  'bert_shakespeare_cpu': dict(
    name='bert', block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.1, position='rope'
  ),
  'bert_base': dict(name='bert', block_size=512, n_layer=12, n_head=12, n_embd=768, dropout=0.1),
  'bert_large': dict(name='bert', block_size=512, n_layer=24, n_head=16, n_embd=1024, dropout=0.1),
}


def load_file(spec: str, root='.') -> ml_collections.ConfigDict:
  """The config of a `FILE[:ARG]` spec (FILE relative to `root`): FILE's get_config(ARG)."""
  file, _, arg = spec.partition(':')
  path = pathlib.Path(root) / file
  if not path.is_file():
    raise ConfigError(f'config file not found: {file}')
  module_spec = importlib.util.spec_from_file_location(f'config_{path.stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def from_json(text: str) -> ml_collections.ConfigDict:
  """A locked config from `config.json` (JSON lists turned back into the tuples rules use)."""
  c = ml_collections.ConfigDict(json.loads(text))
  c.mesh.rules = tuple(
    (name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in c.mesh.rules
  )
  c.lock()
  return c


def preset(name: str) -> ml_collections.ConfigDict:
  """The base config with model preset `name` applied, context length matched, and locked."""
  if name not in MODEL_PRESETS:
    raise ConfigError(f'unknown preset {name!r}; choose one of {", ".join(MODEL_PRESETS)}')
  c = base_config()
  c.model.update(MODEL_PRESETS[name])
  c.data.seq_len = c.model.block_size
  if name.startswith('gpt2_'):
    c.model.vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 128
    c.model.dtype = 'bfloat16'
  c.lock()
  return c


def load(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """The locked config of `spec` (FILE[:ARG]) with `--config.KEY=VALUE` `overrides` applied by
  ml_collections' config flags (values parsed as their fields' types); ConfigError with one line
  on any bad input."""
  file = spec.split(':', 1)[0]
  if not pathlib.Path(file).is_file():
    raise ConfigError(f'config file not found: {file}')
  argv = ['llm-jax', f'--config={spec}', *overrides]
  fv = flags.FlagValues()  # a fresh flag set, so a failed parse leaves nothing behind
  # config_flags reads `--config.*` overrides from sys.argv unless given the argv explicitly.
  config_flags.DEFINE_config_file(
    'config', None, 'Config file, FILE[:ARG].', flag_values=fv, lock_config=True, sys_argv=argv
  )
  try:
    fv(argv)
    return fv.config  # loads the file and applies the overrides now, inside this try
  except flags.UnrecognizedFlagError as e:
    raise ConfigError(f'unknown config key: {e.flagname.removeprefix("config.")}') from None
  except (AttributeError, KeyError) as e:
    # A locked ConfigDict rejects an unknown override key: "'stepz'\nDid you mean ...".
    key, *hint = str(e).strip('"\'').replace('\\n', '\n').split('\n')
    key = key.strip("\\'")
    paths = [a.split('=', 1)[0].removeprefix(OVERRIDE_PREFIX) for a in overrides]
    path = next((p for p in paths if key in p.split('.')), key)
    raise ConfigError(
      f'unknown config key: {path}' + (f' ({hint[0].strip()})' if hint else '')
    ) from None
  except flags.Error as e:
    # config_flags wraps errors raised while loading the file; their last line is the cause.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    raise ConfigError(lines[-1].split('ConfigError: ')[-1]) from None
