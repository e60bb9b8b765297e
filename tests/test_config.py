import importlib.util

import jax
import pytest
from flax import nnx

from llm_jax import config, distributed, validation
from llm_jax.models import configs as model_configs
from llm_jax.models import registry
from llm_jax.train import optim
from tests.conftest import REPO, tiny_config

CONFIG_FILES = sorted((REPO / 'configs').glob('*.py'))


def load_config_file(path, arg=None):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


@pytest.mark.parametrize(
  'path, arg',
  [(p, None) for p in CONFIG_FILES]
  + [(REPO / 'configs/gpt_shakespeare.py', 'cpu')]
  + [(REPO / 'configs/gpt2.py', s) for s in ('350m', '774m', '1.5b')],
  ids=lambda v: getattr(v, 'name', v),
)
def test_every_config_validates_and_builds_abstractly(path, arg):
  cfg = load_config_file(path, arg)
  # The CPU quickstart targets one device; every other config must also fit 8-way data parallel.
  validation.validate(cfg, num_devices=1 if arg == 'cpu' else 8, backend='cpu')
  # A smoke run of 10 steps is valid too: a longer warmup is cut to the run, in one line.
  warmup = cfg.optimizer.warmup_steps
  cfg.train.steps = 10
  note = optim.fit_warmup(cfg)
  assert (note is None) == (warmup <= 10) and cfg.optimizer.warmup_steps == min(warmup, 10)
  assert note is None or note.count('\n') == 0 and f'warmup_steps={warmup}' in note
  validation.validate(cfg, num_devices=1 if arg == 'cpu' else 8, backend='cpu')
  model_cfg = model_configs.from_section(cfg.model, 80)
  abstract = nnx.eval_shape(lambda: registry.build(model_cfg, seed=0))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert n > 0


def test_gpt2_presets_have_their_published_sizes():
  sizes = {}
  for name in ('124m', '350m', '774m', '1.5b'):
    cfg = load_config_file(REPO / 'configs/gpt2.py', name)
    model_cfg = model_configs.from_section(cfg.model, 0)
    abstract = nnx.eval_shape(lambda c=model_cfg: registry.build(c, seed=0))
    sizes[name] = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) / 1e6
  # Published counts use vocab 50257; ours pads to 50304 (+0.04M-0.08M).
  assert sizes['124m'] == pytest.approx(124.4, abs=0.2)
  assert sizes['350m'] == pytest.approx(354.9, abs=0.3)
  assert sizes['774m'] == pytest.approx(774.0, abs=0.3)
  assert sizes['1.5b'] == pytest.approx(1557.7, abs=0.3)


def test_config_is_locked_against_new_keys():
  cfg = tiny_config()
  with pytest.raises(AttributeError):
    cfg.train.stepz = 3


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('model.n_embd', 65, 'model.n_embd=65 must be divisible by model.n_head=2'),
    ('data.seq_len', 65, 'data.seq_len=65 must be in .* model.block_size=64'),
    (
      'train.grad_accum_steps',
      3,
      'train.batch_size=16 must be divisible by train.grad_accum_steps=3',
    ),
    ('optimizer.lr', 0.0, 'optimizer.lr=0.0 must be positive'),
    ('optimizer.warmup_steps', -1, 'optimizer.warmup_steps=-1 must be >= 0'),
    ('sample.top_k', -3, r'sample.top_k=-3 must be >= 0 \(0: all ids\)'),
    ('sample.top_p', 0.0, r'sample.top_p=0.0 must be in \(0, 1\]'),
    ('sample.temperature', -1.0, 'sample.temperature=-1.0 must be >= 0'),
    ('model.name', 'bart', "model.name='bart' must be one of gpt, bert"),
    ('train.task', 'mlm', "train.task='mlm' does not train a gpt"),
    ('train.task', 'pretrain', "train.task='pretrain' must be one of"),
    ('train.mask_rate', 1.0, r'train.mask_rate=1.0 must be in \(0, 1\)'),
    ('data.seq_len', 1, 'data.seq_len=1: mlm needs at least 2'),
    ('model.norm', 'sandwich', "model.norm='sandwich' must be one of post, pre"),
    ('model.dtype', 'float16', "model.dtype='float16' must be one of"),
    ('model.attention', 'cudnn', "model.attention='cudnn' needs a GPU"),
    ('model.attention', 'splash', "model.attention='splash' .* needs a TPU"),
    ('model.dropout', 1.0, 'model.dropout=1.0'),
    ('data.source', 'hub:foo', "data.source='hub:foo': unknown source"),
    ('data.source', 'text:', "data.source='text:': needs an argument"),
    ('data.tokenizer', 'unigram', "data.tokenizer='unigram': unknown kind"),
    ('data.tokenizer', 'wordpiece', "data.tokenizer='wordpiece': write gpt2:DIR, wordpiece:DIR"),
    ('data.tokenizer', 'gpt2', "data.tokenizer='gpt2': write gpt2:DIR"),
    ('data.tokenizer', 'bpe', 'data.tokenizer=bpe needs data.vocab_size'),
    ('data.val_fraction', 0.0, r'data.val_fraction=0.0 must be in \(0, 0.5\]'),
    ('data.text_documents', 'line', "data.text_documents='line' must be one of"),
    ('data.prefetch', -1, 'data.prefetch=-1 must be >= 0'),
    ('train.batch_size', 12, 'must be divisible by mesh data×fsdp = 8'),
    ('mesh.data', 3, 'mesh data×fsdp×tensor = 3 but there are 8 devices'),
    ('mesh.tensor', 8, 'model.n_head=2 must be divisible by mesh.tensor=8'),
    ('wandb.mode', 'cloud', "wandb.mode='cloud'"),
    ('train.on_nonfinite', 'ignore', "train.on_nonfinite='ignore' must be one of halt, skip"),
    ('ckpt.keep_period', -1, 'ckpt.keep_period=-1 must be >= 0'),
  ],
)
def test_invalid_values_name_the_field(field, value, message):
  cfg = tiny_config()
  section, key = field.split('.')
  cfg[section][key] = value
  if field == 'mesh.tensor':
    cfg.mesh.data = 1
  if message.startswith('data.seq_len=1'):
    cfg.model.update(name='bert', position='rope')
  with pytest.raises(config.ConfigError, match=message):
    validation.validate(cfg, num_devices=8, backend='cpu')


def test_splash_attention_needs_whole_blocks_of_the_sequence():
  cfg = tiny_config()
  cfg.model.attention = 'splash'
  with pytest.raises(config.ConfigError, match='data.seq_len=64 is not a multiple'):
    validation.validate(cfg, num_devices=8, backend='tpu')
  cfg.model.block_size = cfg.data.seq_len = 128
  validation.validate(cfg, num_devices=8, backend='tpu')


def test_unknown_preset():
  with pytest.raises(config.ConfigError, match="unknown preset 'gpt_huge'"):
    config.preset('gpt_huge')


@pytest.mark.parametrize(
  'values, message',
  [
    (dict(num_processes=2), 'distributed.coordinator_address \\(host:port\\) is required'),
    (dict(num_processes=2, coordinator_address='localhost'), 'coordinator_address'),
    (dict(num_processes=2, process_id=2, coordinator_address='h:1'), 'process_id=2 must be in'),
    (dict(num_processes=0), 'distributed.num_processes=0'),
  ],
)
def test_bad_distributed_settings_name_the_field(values, message):
  cfg = tiny_config()
  cfg.distributed.update(values)
  with pytest.raises(config.ConfigError, match=message):
    distributed.validate(cfg.distributed)
