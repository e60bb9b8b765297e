"""Base defaults, model presets and validation: the one source of truth for configuration.

Config files in `configs/` call `preset(name)` and override what they need; the CLI applies
`--config.a.b=v` overrides on top; `validate` checks the result before anything is compiled and
raises `ConfigError` naming the offending field.
"""

import importlib.util
import json
import pathlib

import ml_collections

from llm_jax import runtime, sharding, storage
from llm_jax.data import DataError, sources
from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.models import MODELS, splash
from llm_jax.models.bert import NORMS
from llm_jax.models.gpt import ATTENTION, DTYPES, POSITIONS, REMAT_POLICIES

CONFIG_FILE = 'config.json'  # a run's resolved config, in its workdir
# Model settings that leave the parameters alone: a run may resume, or fine-tune, with its own.
# (scan_layers changes their layout; checkpoints are restacked on restore, train/relayout.py.)
SHAPE_FREE_MODEL_KEYS = ('dropout', 'dtype', 'attention', 'remat', 'scan_layers')
TASKS = ('lm', 'mlm', 'classify')
PRETRAINING = {'gpt': 'lm', 'bert': 'mlm'}  # each model family's own objective
LABELLED_SOURCES = ('genre', 'jsonl', 'tfds')  # source schemes that carry labels


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""


def base_config() -> ml_collections.ConfigDict:
  """Every key the framework reads, with its default."""
  c = ml_collections.ConfigDict()
  c.model = dict(
    name='gpt',
    vocab_size=0,  # 0: the tokenizer's vocabulary size
    block_size=256,
    n_layer=6,
    n_head=6,
    n_embd=384,
    mlp_ratio=4,
    dropout=0.0,
    bias=True,
    position='learned',
    rope_theta=10_000.0,
    dtype='float32',
    attention='auto',
    norm='post',  # bert: 'post'-LN as published, or 'pre'
    type_vocab_size=2,  # bert: token-type (segment) embeddings
    scan_layers=False,  # blocks stacked and scanned: compile time independent of depth
    remat='none',  # recompute activations in the backward pass: none | dots_saveable | full
  )
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
    data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1, rules=sharding.DEFAULT_RULES
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
    gpu_flags=' '.join(runtime.GPU_FLAGS),
    cache_dir=runtime.DEFAULT_CACHE_DIR,
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


def read_run(workdir) -> ml_collections.ConfigDict:
  """The resolved config a run (or export) saved; FileNotFoundError naming it if there is none."""
  path = storage.path(workdir) / CONFIG_FILE
  try:
    return from_json(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f'{path} not found: is {workdir} a run?') from None


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


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _choice_in(value, name: str, choices) -> None:
  _check(value in choices, f'{name}={value!r} must be one of {", ".join(map(str, choices))}')


def _choice(cfg, section: str, field: str, choices) -> None:
  _choice_in(cfg[section][field], f'{section}.{field}', choices)


def validate_distributed(d) -> None:
  """Checks `distributed.*` alone: it is needed before any device can be counted."""
  _check(d.num_processes >= 1, f'distributed.num_processes={d.num_processes} must be >= 1')
  _check(
    0 <= d.process_id < d.num_processes,
    f'distributed.process_id={d.process_id} must be in [0, {d.num_processes})',
  )
  _check(
    d.num_processes == 1 or d.coordinator_address.rpartition(':')[2].isdigit(),
    'distributed.coordinator_address (host:port) is required when num_processes > 1',
  )
  _check(d.timeout_s > 0, f'distributed.timeout_s={d.timeout_s} must be positive')


def validate_data(d) -> None:
  """Checks `data.*` alone (also what `llm-jax prepare` reads); files are not looked at."""
  try:
    sources.check_spec(d.source)
    kind, _ = tokenizer_lib.parse(d.tokenizer)
  except DataError as e:
    raise ConfigError(str(e)) from None
  _check(
    not (d.path and d.source != 'shakespeare'),
    f'data.path={d.path!r} and data.source={d.source!r}: set one (prepared data or a source)',
  )
  _check(
    not storage.is_bucket(d.path),
    f'data.path={d.path}: prepared shards are memory-mapped, so they must be on local disk'
    ' (copy them down first, e.g. gcloud storage cp -r)',
  )
  _check(
    kind != 'bpe' or d.vocab_size > 0,
    'data.tokenizer=bpe needs data.vocab_size (the vocabulary to train)',
  )
  _check(0 < d.val_fraction <= 0.5, f'data.val_fraction={d.val_fraction} must be in (0, 0.5]')
  _choice_in(d.text_documents, 'data.text_documents', sources.TEXT_DOCUMENTS)
  _check(d.prefetch >= 0, f'data.prefetch={d.prefetch} must be >= 0')


def task_name(cfg) -> str:
  """The objective `cfg` trains: train.task, or the model family's pretraining objective."""
  return cfg.train.task or PRETRAINING[cfg.model.name]


def _check_task(cfg) -> None:
  t, m = cfg.train, cfg.model
  _choice_in(t.task, 'train.task', ('', *TASKS))
  task = task_name(cfg)
  _check(
    task == 'classify' or task == PRETRAINING[m.name],
    f'train.task={task!r} does not train a {m.name} (its objective is {PRETRAINING[m.name]!r})',
  )
  _choice(cfg, 'model', 'norm', NORMS)
  _check(0 < t.mask_rate < 1, f'train.mask_rate={t.mask_rate} must be in (0, 1)')
  _check(
    task != 'mlm' or cfg.data.seq_len >= 2,
    f'data.seq_len={cfg.data.seq_len}: mlm needs at least 2 ([CLS] and one token to predict)',
  )
  scheme = cfg.data.source.partition(':')[0]
  _check(
    task != 'classify' or (scheme in LABELLED_SOURCES and not cfg.data.path),
    f'data.source={cfg.data.source!r}: classification needs labelled data:'
    f' {", ".join(LABELLED_SOURCES)}',
  )
  _check(
    not (m.name == 'bert' and cfg.data.segment_ids),
    'data.segment_ids is for decoders (model.name=gpt); bert reads whole windows',
  )


def fit_warmup(cfg) -> str | None:
  """Shortens a warmup longer than the run to the run (a smoke run of a few steps of any
  config); returns the one line that says so, or None."""
  o, t = cfg.optimizer, cfg.train
  if t.steps <= 0 or o.warmup_steps <= t.steps:  # validate names a bad train.steps
    return None
  note = (
    f'optimizer.warmup_steps={o.warmup_steps} is longer than train.steps={t.steps}: warming up'
    f' over all {t.steps} steps'
  )
  o.warmup_steps = t.steps
  return note


def validate(cfg, num_devices: int, backend: str, *, training: bool = True) -> None:
  """Raise ConfigError naming the first field that cannot work on `num_devices` devices.

  `training=False` (evaluation of a finished run): the train batch is not checked against them.
  """
  m, t, o = cfg.model, cfg.train, cfg.optimizer
  _choice(cfg, 'model', 'name', tuple(MODELS))
  _choice(cfg, 'train', 'on_nonfinite', ('halt', 'skip'))
  _choice(cfg, 'model', 'dtype', tuple(DTYPES))
  _choice(cfg, 'model', 'attention', ATTENTION)
  _choice(cfg, 'model', 'position', POSITIONS)
  _choice(cfg, 'model', 'remat', tuple(REMAT_POLICIES))
  validate_data(cfg.data)
  _check_task(cfg)
  for field in ('n_layer', 'n_head', 'n_embd', 'block_size', 'mlp_ratio'):
    _check(m[field] > 0, f'model.{field}={m[field]} must be positive')
  _check(m.vocab_size >= 0, f'model.vocab_size={m.vocab_size} must be >= 0 (0: from the tokenizer)')
  _check(
    m.n_embd % m.n_head == 0,
    f'model.n_embd={m.n_embd} must be divisible by model.n_head={m.n_head}',
  )
  _check(
    m.position != 'rope' or (m.n_embd // m.n_head) % 2 == 0,
    f'model.position=rope needs an even head size, got n_embd/n_head={m.n_embd // m.n_head}',
  )
  _check(0.0 <= m.dropout < 1.0, f'model.dropout={m.dropout} must be in [0, 1)')
  _check(
    m.attention != 'cudnn' or backend == 'gpu',
    f"model.attention='cudnn' needs a GPU, but the backend is {backend}",
  )
  _check(
    m.attention != 'splash' or backend == 'tpu',
    f"model.attention='splash' (a Pallas TPU kernel) needs a TPU, but the backend is {backend}",
  )
  _check(
    m.attention != 'splash' or splash.supports(cfg.data.seq_len),
    f"model.attention='splash' tiles the sequence in blocks of {splash.LANES}:"
    f' data.seq_len={cfg.data.seq_len} is not a multiple',
  )
  _check(
    0 < cfg.data.seq_len <= m.block_size,
    f'data.seq_len={cfg.data.seq_len} must be in [1, model.block_size={m.block_size}]'
    ' (the position table)',
  )
  for field in ('steps', 'batch_size', 'grad_accum_steps', 'log_every'):
    _check(t[field] > 0, f'train.{field}={t[field]} must be positive')
  _check(
    t.batch_size % t.grad_accum_steps == 0,
    f'train.batch_size={t.batch_size} must be divisible by'
    f' train.grad_accum_steps={t.grad_accum_steps}',
  )
  _check(o.lr > 0, f'optimizer.lr={o.lr} must be positive')
  _check(o.warmup_steps >= 0, f'optimizer.warmup_steps={o.warmup_steps} must be >= 0')
  _check(0 <= o.min_lr_ratio <= 1, f'optimizer.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]')
  _check(o.weight_decay >= 0, f'optimizer.weight_decay={o.weight_decay} must be >= 0')
  _check(o.clip_norm >= 0, f'optimizer.clip_norm={o.clip_norm} must be >= 0 (0: off)')
  _check(
    t.loss_chunk == 0 or cfg.data.seq_len % t.loss_chunk == 0,
    f'train.loss_chunk={t.loss_chunk} must divide data.seq_len={cfg.data.seq_len} (0: off)',
  )
  _check(
    t.loss_chunk == 0 or task_name(cfg) == 'lm',
    f'train.loss_chunk is for language models (train.task=lm), not {task_name(cfg)}',
  )
  _check(
    cfg.profile.steps >= 0 and cfg.profile.skip >= 0, 'profile.steps and profile.skip must be >= 0'
  )
  _check(
    cfg.eval.batches >= 0 and cfg.eval.every_steps >= 0,
    'eval.batches and eval.every_steps must be >= 0',
  )
  try:
    data, fsdp, tensor = sharding.mesh_shape(cfg.mesh, num_devices)
    sharding.dcn_shape(cfg.mesh, (data, fsdp, tensor))
    sharding.check_rules(cfg.mesh.rules)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  validate_distributed(cfg.distributed)
  _check(
    tensor == 1 or m.n_head % tensor == 0,
    f'model.n_head={m.n_head} must be divisible by mesh.tensor={tensor}',
  )
  micro = t.batch_size // t.grad_accum_steps
  _check(
    not training or micro % (data * fsdp) == 0,
    f'train.batch_size={t.batch_size} / train.grad_accum_steps={t.grad_accum_steps} = {micro}'
    f' must be divisible by mesh data×fsdp = {data * fsdp}',
  )
  _check(
    cfg.eval.batches == 0 or cfg.eval.batch_size % (data * fsdp) == 0,
    f'eval.batch_size={cfg.eval.batch_size} must be divisible by mesh data×fsdp = {data * fsdp}',
  )
  _check(cfg.ckpt.every_steps >= 0, f'ckpt.every_steps={cfg.ckpt.every_steps} must be >= 0')
  _check(cfg.ckpt.max_to_keep > 0, f'ckpt.max_to_keep={cfg.ckpt.max_to_keep} must be positive')
  _check(cfg.ckpt.keep_period >= 0, f'ckpt.keep_period={cfg.ckpt.keep_period} must be >= 0')
  _choice(cfg, 'wandb', 'mode', ('online', 'offline', 'disabled'))
  validate_sampling(cfg.sample, 'sample.')


def validate_sampling(s, prefix: str, vocab_size: int | None = None) -> None:
  """Checks sampling settings (`sample.*` of a config, or `sample`'s flags with prefix '--');
  top_k against the tokenizer's `vocab_size` when it is known."""
  _check(s.max_new_tokens >= 0, f'{prefix}max_new_tokens={s.max_new_tokens} must be >= 0')
  _check(s.temperature >= 0, f'{prefix}temperature={s.temperature} must be >= 0 (0: greedy)')
  _check(0 < s.top_p <= 1, f'{prefix}top_p={s.top_p} must be in (0, 1] (1: all ids)')
  _check(s.top_k >= 0, f'{prefix}top_k={s.top_k} must be >= 0 (0: all ids)')
  _check(
    vocab_size is None or s.top_k <= vocab_size,
    f'{prefix}top_k={s.top_k} is more than the {vocab_size} ids of the tokenizer',
  )
