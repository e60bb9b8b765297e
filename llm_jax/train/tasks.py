"""Training tasks: what the step minimises and what evaluation reports, over batches from data.

  lm        GPT pretraining: next-token cross-entropy over packed windows
  mlm       BERT pretraining: `train.mask_rate` of the tokens are chosen (80% become [MASK],
            10% a random id, 10% stay; special ids such as [CLS], [SEP] and EOS are never chosen
            nor drawn as the random id) and only those are scored
  classify  fine-tuning: class logits from the pooled backbone (BERT encoder or GPT); cross-entropy,
            accuracy and macro-F1

The loop, sharding, checkpoints and tracking are the same for every task; a task supplies the model
config, its batches (`data.loader`'s WindowBatches or ExampleBatches, one protocol), `loss` for
the jitted train step and `evaluate` for the jitted eval step (pure functions in `losses.py`).
Both return their means with the weight behind them, the number of scored tokens or examples
(`(loss, (metrics, weight))` and `(metrics, weight)`), so that gradient accumulation and
evaluation summaries weigh every token alike whatever its batch (MLM chooses a different number
of tokens in each).
MLM masks are drawn inside the jitted step from a key folded from (seed, step): deterministic, with
no host work per step. Evaluation masks are drawn once, so eval numbers compare across steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from llm_jax import data, rundir
from llm_jax.data import labelled, loader, sources
from llm_jax.errors import ConfigError, MissingFile, check, choice
from llm_jax.models import configs as model_configs
from llm_jax.models.classifier import backbone_params
from llm_jax.models.configs import BERTConfig, ClassifierConfig
from llm_jax.train.losses import (
  accuracy,
  cross_entropy,
  lm_eval,
  lm_loss,
  mask_tokens,
  mlm_predictions,
  replacement_ids,
)

TASKS = ('lm', 'mlm', 'classify')
PRETRAINING = {'gpt': 'lm', 'bert': 'mlm'}  # each model family's own objective
LABELLED_SOURCES = ('genre', 'jsonl', 'tfds')  # source schemes that carry labels


def task_name(cfg) -> str:
  """The objective `cfg` trains: train.task, or the model family's pretraining objective."""
  return cfg.train.task or PRETRAINING[cfg.model.name]


def validate(cfg) -> None:
  """Checks the task settings (`train.task`, `train.mask_rate`, `train.loss_chunk`) against
  the model and data they train."""
  t, m = cfg.train, cfg.model
  choice(t.task, 'train.task', ('', *TASKS))
  task = task_name(cfg)
  check(
    task == 'classify' or task == PRETRAINING[m.name],
    f'train.task={task!r} does not train a {m.name} (its objective is {PRETRAINING[m.name]!r})',
  )
  check(0 < t.mask_rate < 1, f'train.mask_rate={t.mask_rate} must be in (0, 1)')
  check(
    task != 'mlm' or cfg.data.seq_len >= 2,
    f'data.seq_len={cfg.data.seq_len}: mlm needs at least 2 ([CLS] and one token to predict)',
  )
  scheme = cfg.data.source.partition(':')[0]
  check(
    task != 'classify' or (scheme in LABELLED_SOURCES and not cfg.data.path),
    f'data.source={cfg.data.source!r}: classification needs labelled data:'
    f' {", ".join(LABELLED_SOURCES)}',
  )
  check(
    not (m.name == 'bert' and cfg.data.segment_ids),
    'data.segment_ids is for decoders (model.name=gpt); bert reads whole windows',
  )
  check(
    t.loss_chunk == 0 or cfg.data.seq_len % t.loss_chunk == 0,
    f'train.loss_chunk={t.loss_chunk} must divide data.seq_len={cfg.data.seq_len} (0: off)',
  )
  check(
    t.loss_chunk == 0 or task == 'lm',
    f'train.loss_chunk is for language models (train.task=lm), not {task}',
  )


class Task:
  """A task's data, model config and objective. Subclasses fill in the attributes."""

  name: str
  tokenizer: data.Tokenizer
  model_cfg: object  # what `registry.build` takes
  perf_cfg: object  # the transformer whose FLOPs count (the backbone for a classifier)
  scored: float = 1.0  # share of positions whose vocabulary logits are computed (perf.py)
  origin: str  # where the data came from, for the log
  train_batches: object  # loader.WindowBatches or ExampleBatches: shapes(B), (step, rows)
  eval_set: list  # global evaluation batches (numpy)

  def describe(self) -> str:
    """One line on the data, for the log."""
    raise NotImplementedError

  def loss(self, model, batch, key, rngs):
    """(loss, (metrics, weight)) of `model` on a training batch, inside the jitted step: means
    over the batch's scored tokens or examples, and how many those are."""
    raise NotImplementedError

  def evaluate(self, model, batch) -> tuple[dict, jax.Array]:
    """Per-batch evaluation outputs and their weight, inside the jitted eval step."""
    raise NotImplementedError

  def summarize(self, outputs: list[tuple[dict, float]]) -> dict[str, float]:
    """The eval_* metrics from all batches' outputs: each batch's means weighted by its
    scored tokens, so every token counts the same."""
    total = sum(float(weight) for _, weight in outputs)
    return {
      f'eval_{k}': sum(float(m[k]) * float(w) for m, w in outputs) / max(total, 1)
      for k in outputs[0][0]
    }

  def load_init(self, params, restore):
    """Parameters to start from, given freshly initialised `params` and `restore(model_cfg)`,
    which reads ckpt.init_from as a model of `model_cfg`: by default the whole same model."""
    del params
    return restore(self.model_cfg)


class PretrainingTask(Task):
  """A task over a token stream: the data and model of `cfg`."""

  def __init__(self, cfg, dataset: data.Dataset):
    self.dataset, self.tokenizer, self.origin = dataset, dataset.tokenizer, dataset.origin
    self.model_cfg = self.perf_cfg = model_configs.for_tokenizer(cfg.model, self.tokenizer)

  def describe(self):
    tok = self.tokenizer
    return (
      f'{self.name} on {self.origin}: {len(self.dataset.train):,} train /'
      f' {len(self.dataset.validation):,} validation tokens, {tok.kind} tokenizer'
      f' ({tok.vocab_size} ids)'
    )


class LanguageModel(PretrainingTask):
  name = 'lm'

  def __init__(self, cfg, dataset: data.Dataset):
    super().__init__(cfg, dataset)
    d, t = cfg.data, cfg.train
    eos = self.tokenizer.eos_id if d.segment_ids else None
    self.train_batches = loader.WindowBatches(
      dataset.train, batch_size=t.batch_size, seq_len=d.seq_len, seed=t.seed, eos_id=eos
    )
    held_out = loader.eval_batches(
      dataset.validation,
      num_batches=cfg.eval.batches,
      batch_size=cfg.eval.batch_size,
      seq_len=d.seq_len,
      eos_id=eos,
    )
    self.eval_set = [b.arrays() for b in held_out]
    self.loss_chunk = t.loss_chunk

  def loss(self, model, batch, key, rngs):
    return lm_loss(model, batch, key, rngs, chunk=self.loss_chunk)

  def evaluate(self, model, batch):
    return lm_eval(model, batch, chunk=self.loss_chunk)


class MaskedLanguageModel(PretrainingTask):
  name = 'mlm'

  def __init__(self, cfg, dataset: data.Dataset):
    super().__init__(cfg, dataset)
    d, t = cfg.data, cfg.train
    tok = self.tokenizer
    self.cls_id, self.mask_id = model_configs.encoder_ids(tok)
    self.predictions = mlm_predictions(d.seq_len, t.mask_rate)
    self.scored = self.predictions / d.seq_len
    never = tuple(sorted({self.cls_id, self.mask_id, *tok.special_ids()}))
    replacements = replacement_ids(tok.vocab_size, never)
    self.mask = dict(rate=t.mask_rate, mask_id=self.mask_id, replacements=replacements, never=never)
    # seq_len - 1 text tokens per row; the step puts [CLS] in front.
    self.train_batches = loader.WindowBatches(
      dataset.train, keys=('inputs',), batch_size=t.batch_size, seq_len=d.seq_len - 1, seed=t.seed
    )
    held_out = loader.eval_batches(
      dataset.validation,
      num_batches=cfg.eval.batches,
      batch_size=cfg.eval.batch_size,
      seq_len=d.seq_len - 1,
    )
    eval_key = jax.random.key(t.seed + 1)
    self.eval_set = [
      self._masked_eval_batch(b.inputs, jax.random.fold_in(eval_key, i))
      for i, b in enumerate(held_out)
    ]

  def _with_cls(self, inputs):
    return jnp.concatenate([jnp.full((inputs.shape[0], 1), self.cls_id, inputs.dtype), inputs], 1)

  def _masked_eval_batch(self, inputs, key) -> dict:
    tokens = self._with_cls(jnp.asarray(inputs))
    masked, chosen = mask_tokens(key, tokens, **self.mask)
    return {
      'inputs': np.asarray(masked),
      'targets': np.asarray(tokens),
      'weights': np.asarray(chosen, np.float32),
    }

  def _scored(self, model, inputs, targets, weights, rngs):
    """(loss, ({'mlm_accuracy'}, positions scored)) over the chosen positions, with logits
    computed at those only: the first `self.predictions` chosen positions of each row."""
    at = jnp.argsort(weights == 0, axis=1, stable=True)[:, : self.predictions]  # chosen first
    logits = model(inputs, positions=at, rngs=rngs)
    targets, weights = (jnp.take_along_axis(x, at, axis=1) for x in (targets, weights))
    acc = accuracy(logits, targets, weights)
    return cross_entropy(logits, targets, weights), ({'mlm_accuracy': acc}, weights.sum())

  def loss(self, model, batch, key, rngs):
    tokens = self._with_cls(batch['inputs'])
    masked, chosen = mask_tokens(key, tokens, **self.mask)
    return self._scored(model, masked, tokens, chosen.astype(jnp.float32), rngs)

  def evaluate(self, model, batch):
    loss, (metrics, weight) = self._scored(
      model, batch['inputs'], batch['targets'], batch['weights'], None
    )
    return {'loss': loss, **metrics}, weight


def _init_config(source: str):
  """The config of the run or export in `source`, for ckpt.init_from."""
  try:
    return rundir.read_config(source)
  except FileNotFoundError as e:
    raise MissingFile(f'ckpt.init_from={source}: {e}') from None


def classifier_backbone(cfg, init_cfg, tok):
  """The backbone a classifier of `cfg` fine-tunes: `init_cfg`'s model (ckpt.init_from's run)
  with fine-tuning's own shape-free settings, or `cfg.model` when there is none."""
  section = cfg.model
  if init_cfg is not None:
    section = init_cfg.model
    section.unlock()
    for key in model_configs.SHAPE_FREE_KEYS:
      section[key] = cfg.model[key]
  backbone = model_configs.for_tokenizer(section, tok)
  if cfg.data.seq_len > backbone.block_size:
    raise ConfigError(
      f'data.seq_len={cfg.data.seq_len} is longer than the position table of the'
      f' {"model" if init_cfg is None else "ckpt.init_from"} model'
      f' (block_size={backbone.block_size})'
    )
  return backbone


def run_model_config(cfg, tok):
  """The model a run of `cfg` trains, from its tokenizer and config alone (a classifier also
  reads its class names): what `export` rebuilds without loading the run's data."""
  if task_name(cfg) != 'classify':
    return model_configs.for_tokenizer(cfg.model, tok)
  init_cfg = _init_config(cfg.ckpt.init_from) if cfg.ckpt.init_from else None
  names = labelled.classes(sources.open_source(cfg.data), cfg.data.classes)
  return ClassifierConfig(classifier_backbone(cfg, init_cfg, tok), len(names))


class Classification(Task):
  """Fine-tuning: a classifier on the backbone of `ckpt.init_from` (its architecture and
  tokenizer), or on a fresh `model.*` backbone when there is none."""

  name = 'classify'

  def __init__(self, cfg, workdir: epath.Path | None, write: bool = True):
    d, t = cfg.data, cfg.train
    source = sources.open_source(d)
    self.origin = d.source
    init = cfg.ckpt.init_from
    saved = rundir.path(workdir, rundir.TOKENIZER) if workdir else None
    if init:
      init_cfg = _init_config(init)
      self.tokenizer = rundir.read_tokenizer(init)
      if saved and write:
        self.tokenizer.save(saved)
    else:
      init_cfg, self.tokenizer = None, data.source_tokenizer(source, d, saved, write)
    backbone = classifier_backbone(cfg, init_cfg, self.tokenizer)
    self.family = 'bert' if isinstance(backbone, BERTConfig) else 'gpt'
    self.classes = labelled.classes(source, d.classes)
    self.model_cfg = ClassifierConfig(backbone, len(self.classes))
    self.perf_cfg = backbone
    self.scored = 0.0  # class logits from one pooled vector: no vocabulary projection
    cls_id = model_configs.encoder_ids(self.tokenizer)[0] if self.family == 'bert' else None
    encode = lambda split: labelled.encode(
      source, split, self.tokenizer, self.classes, seq_len=d.seq_len, cls_id=cls_id
    )
    self.train_examples, held_out = encode('train'), encode('validation')
    self.train_batches = loader.ExampleBatches(
      self.train_examples, batch_size=t.batch_size, seed=t.seed
    )
    self.num_eval_examples = len(held_out['labels'])
    self.eval_set = loader.fixed_batches(held_out, cfg.eval.batch_size) if cfg.eval.batches else []

  def describe(self):
    n_train, n_val = len(self.train_examples['labels']), self.num_eval_examples
    return (
      f'classify {self.origin}: {n_train:,} train / {n_val:,} validation examples,'
      f' classes {", ".join(self.classes)}; {self.family} backbone, {self.tokenizer.kind}'
      f' tokenizer ({self.tokenizer.vocab_size} ids)'
    )

  def loss(self, model, batch, key, rngs):
    del key
    logits = model(batch['inputs'], batch['lengths'], rngs=rngs)
    ones = jnp.ones(batch['labels'].shape)
    metrics = {'accuracy': accuracy(logits, batch['labels'], ones)}
    return cross_entropy(logits, batch['labels']), (metrics, ones.sum())

  def evaluate(self, model, batch):
    logits = model(batch['inputs'], batch['lengths'])
    w = batch['weights']
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels'])
    n = len(self.classes)
    truth = jax.nn.one_hot(batch['labels'], n) * w[:, None]
    predicted = jax.nn.one_hot(jnp.argmax(logits, -1), n)
    sums = {'loss_sum': (losses * w).sum(), 'confusion': truth.T @ predicted}  # (true, predicted)
    return sums, w.sum()

  def summarize(self, outputs):
    outputs = [o for o, _ in outputs]  # sums already: the confusion matrix counts the examples
    confusion = np.sum([o['confusion'] for o in outputs], axis=0)
    total = confusion.sum()
    tp = np.diag(confusion)
    support, predicted = confusion.sum(1), confusion.sum(0)
    present = (support + predicted) > 0  # classes absent from labels and predictions: no F1
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return {
      'eval_loss': float(sum(o['loss_sum'] for o in outputs) / total),
      'eval_accuracy': float(tp.sum() / total),
      'eval_macro_f1': float(f1.mean()),
    }

  def load_init(self, params, restore):
    """The pretrained backbone (the whole pretraining model is read: BERT's MLM head is left
    behind), the new head as initialised."""
    backbone = self.model_cfg.backbone
    params['backbone'] = backbone_params(restore(backbone), backbone)
    return params


def make(cfg, workdir: epath.Path | None, *, write: bool = True) -> Task:
  """The task `cfg` trains, with its data loaded and the tokenizer `workdir` holds, if any (kept
  there when `write`: the run's process 0)."""
  name = task_name(cfg)
  if name == 'classify':
    return Classification(cfg, workdir, write)
  dataset = data.load(cfg.data, workdir, write=write)
  return (LanguageModel if name == 'lm' else MaskedLanguageModel)(cfg, dataset)
