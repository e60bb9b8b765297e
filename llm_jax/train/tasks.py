"""Training tasks: what a batch holds, what the step minimises, what evaluation reports.

  lm        GPT pretraining: next-token cross-entropy over packed windows
  mlm       BERT pretraining: `train.mask_rate` of the tokens are chosen (80% become [MASK],
            10% a random id, 10% stay; special ids such as [CLS], [SEP] and EOS are never chosen
            nor drawn as the random id) and only those are scored
  classify  fine-tuning: class logits from the pooled backbone (BERT encoder or GPT); cross-entropy,
            accuracy and macro-F1

The loop, sharding, checkpoints and tracking are the same for every task; a task supplies the model
config, the batches, `loss` for the jitted train step and `evaluate` for the jitted eval step.
Both return their means with the weight behind them, the number of scored tokens or examples
(`(loss, (metrics, weight))` and `(metrics, weight)`), so that gradient accumulation and
evaluation summaries weigh every token alike whatever its batch (MLM chooses a different number
of tokens in each).
MLM masks are drawn inside the jitted step from a key folded from (seed, step): deterministic, with
no host work per step. Evaluation masks are drawn once, so eval numbers compare across steps.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from llm_jax import config as config_lib
from llm_jax import data, models, storage
from llm_jax.data import labelled, loader, sources
from llm_jax.data import tokenizer as tokenizer_lib
from llm_jax.models import gpt
from llm_jax.models.bert import BERTConfig
from llm_jax.models.classifier import ClassifierConfig, backbone_params

ENCODER_SPECIALS = 2  # [CLS] and [MASK], given the ids after the tokenizer's vocabulary


def model_vocab(model_name: str, tok) -> int:
  """Ids the model must embed: the tokenizer's, plus [CLS] and [MASK] for encoders whose
  tokenizer lacks them."""
  appended = model_name == 'bert' and tok.cls_id is None
  return tok.vocab_size + (ENCODER_SPECIALS if appended else 0)


def encoder_ids(tok) -> tuple[int, int]:
  """An encoder's ([CLS], [MASK]) ids: the tokenizer's own, else the two after its vocabulary."""
  if tok.cls_id is not None:
    return tok.cls_id, tok.mask_id
  return tok.vocab_size, tok.vocab_size + 1


def model_config(model_section, tok):
  """The pretraining model's dataclass config, its vocabulary checked against the tokenizer."""
  needed = model_vocab(model_section.name, tok)
  model_cfg = models.model_config(model_section, needed)
  if model_cfg.vocab_size < needed:
    raise config_lib.ConfigError(
      f'model.vocab_size={model_section.vocab_size} is smaller than the {needed} ids the'
      f' {tok.kind} tokenizer needs'
    )
  return model_cfg


def cross_entropy(logits, labels, weights=None):
  """Mean cross-entropy in nats over the positions where `weights` (default: all) are nonzero."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is None:
    return losses.mean()
  return (losses * weights).sum() / jnp.maximum(weights.sum(), 1)


def accuracy(logits, labels, weights):
  hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return (hits * weights).sum() / jnp.maximum(weights.sum(), 1)


def replacement_ids(vocab: int, never) -> np.ndarray:
  """The ids below `vocab` that MLM's random replacement may draw: all but those in `never`."""
  return np.setdiff1d(np.arange(vocab), np.asarray(never)).astype(np.int32)


def mask_tokens(key, tokens, *, rate: float, mask_id: int, replacements, never):
  """BERT's corruption: (inputs, chosen). Each token outside `never` is chosen with probability
  `rate`; a chosen token becomes `mask_id` (80%), an id drawn from `replacements` (10%), or
  stays (10%)."""
  choose_key, how_key, random_key = jax.random.split(key, 3)
  allowed = ~jnp.isin(tokens, jnp.asarray(never))
  chosen = allowed & (jax.random.uniform(choose_key, tokens.shape) < rate)
  how = jax.random.uniform(how_key, tokens.shape)
  replacements = jnp.asarray(replacements)
  random_ids = replacements[jax.random.randint(random_key, tokens.shape, 0, len(replacements))]
  corrupted = jnp.where(how < 0.8, mask_id, jnp.where(how < 0.9, random_ids, tokens))
  return jnp.where(chosen, corrupted, tokens), chosen


class Task:
  """A task's data, model config and objective. Subclasses fill in the attributes."""

  name: str
  tokenizer: tokenizer_lib.Tokenizer
  model_cfg: object  # what `models.build` takes
  perf_cfg: object  # the transformer whose FLOPs count (the backbone for a classifier)
  scored: float = 1.0  # share of positions whose vocabulary logits are computed (perf.py)
  origin: str  # where the data came from, for the log
  train_batches: object  # (step, rows) -> dict of this process's rows of the global batch
  eval_set: list  # global evaluation batches (numpy)

  def shapes(self, batch_size: int) -> dict[str, tuple]:
    """Global shape of each training batch array."""
    raise NotImplementedError

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


def chunked_cross_entropy(model, hidden, targets, chunk: int):
  """Mean cross-entropy of GPT's tied output projection on hidden states (B, T, C), `chunk`
  positions at a time. Each chunk's logits are recomputed in the backward pass, so neither pass
  holds more than (B, chunk, V) fp32 logits, where the plain loss holds (B, T, V)."""
  b, t, c = hidden.shape
  split = lambda x: x.reshape(b, t // chunk, chunk, *x.shape[2:]).swapaxes(0, 1)

  @jax.checkpoint
  def chunk_loss(h, y):  # h (B, chunk, C)
    logits = gpt.tied_logits(model.wte, h)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

  add = lambda total, xy: (total + chunk_loss(*xy), None)
  total, _ = jax.lax.scan(add, jnp.zeros((), jnp.float32), (split(hidden), split(targets)))
  return total / targets.size


def lm_loss(model, batch, key, rngs, *, chunk: int = 0):
  """(next-token cross-entropy, ({}, targets scored)); `segment_ids` and `positions` in the batch
  when packed.

  `chunk` > 0: the loss goes `chunk` positions at a time (`chunked_cross_entropy`).
  """
  del key
  inputs = dict(segment_ids=batch.get('segment_ids'), positions=batch.get('positions'), rngs=rngs)
  weight = jnp.float32(batch['targets'].size)
  if chunk:
    hidden = model.hidden(batch['inputs'], **inputs)
    return chunked_cross_entropy(model, hidden, batch['targets'], chunk), ({}, weight)
  return cross_entropy(model(batch['inputs'], **inputs), batch['targets']), ({}, weight)


def lm_eval(model, batch, *, chunk: int = 0):
  loss, (_, weight) = lm_loss(model, batch, None, None, chunk=chunk)
  return {'loss': loss}, weight


class PretrainingTask(Task):
  """A task over a token stream: the data and model of `cfg`."""

  def __init__(self, cfg, dataset: data.Dataset):
    self.dataset, self.tokenizer, self.origin = dataset, dataset.tokenizer, dataset.origin
    self.seq_len = cfg.data.seq_len
    self.model_cfg = self.perf_cfg = model_config(cfg.model, self.tokenizer)

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
    batches = loader.TrainBatches(
      dataset.train, batch_size=t.batch_size, seq_len=d.seq_len, seed=t.seed, eos_id=eos
    )
    self.keys = batches.keys
    self.train_batches = lambda step, rows: batches(step, rows).arrays()
    held_out = loader.eval_batches(
      dataset.validation,
      num_batches=cfg.eval.batches,
      batch_size=cfg.eval.batch_size,
      seq_len=d.seq_len,
      eos_id=eos,
    )
    self.eval_set = [b.arrays() for b in held_out]
    self.loss_chunk = t.loss_chunk

  def shapes(self, batch_size):
    return dict.fromkeys(self.keys, (batch_size, self.seq_len))

  def loss(self, model, batch, key, rngs):
    return lm_loss(model, batch, key, rngs, chunk=self.loss_chunk)

  def evaluate(self, model, batch):
    return lm_eval(model, batch, chunk=self.loss_chunk)


def mlm_predictions(seq_len: int, rate: float) -> int:
  """Positions scored per MLM row: the expected number chosen plus 4 standard deviations. A row
  with more (probability below 1e-4) leaves the excess out of its loss."""
  mean = rate * seq_len
  return min(seq_len, math.ceil(mean + 4 * math.sqrt(mean * (1 - rate))) + 1)


class MaskedLanguageModel(PretrainingTask):
  name = 'mlm'

  def __init__(self, cfg, dataset: data.Dataset):
    super().__init__(cfg, dataset)
    d, t = cfg.data, cfg.train
    tok = self.tokenizer
    self.cls_id, self.mask_id = encoder_ids(tok)
    self.predictions = mlm_predictions(d.seq_len, t.mask_rate)
    self.scored = self.predictions / d.seq_len
    never = tuple(sorted({self.cls_id, self.mask_id, *tok.special_ids()}))
    replacements = replacement_ids(tok.vocab_size, never)
    self.mask = dict(rate=t.mask_rate, mask_id=self.mask_id, replacements=replacements, never=never)
    # seq_len - 1 text tokens per row; the step puts [CLS] in front.
    batches = loader.TrainBatches(
      dataset.train, batch_size=t.batch_size, seq_len=d.seq_len - 1, seed=t.seed
    )
    self.train_batches = lambda step, rows: {'inputs': batches(step, rows).inputs}
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

  def shapes(self, batch_size):
    return {'inputs': (batch_size, self.seq_len - 1)}

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
    return config_lib.read_run(source)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'ckpt.init_from={source}: {e}') from None


def classifier_backbone(cfg, init_cfg, tok):
  """The backbone a classifier of `cfg` fine-tunes: `init_cfg`'s model (ckpt.init_from's run)
  with fine-tuning's own shape-free settings, or `cfg.model` when there is none."""
  section = cfg.model
  if init_cfg is not None:
    section = init_cfg.model
    section.unlock()
    for key in config_lib.SHAPE_FREE_MODEL_KEYS:
      section[key] = cfg.model[key]
  backbone = model_config(section, tok)
  if cfg.data.seq_len > backbone.block_size:
    raise config_lib.ConfigError(
      f'data.seq_len={cfg.data.seq_len} is longer than the position table of the'
      f' {"model" if init_cfg is None else "ckpt.init_from"} model'
      f' (block_size={backbone.block_size})'
    )
  return backbone


def run_model_config(cfg, tok):
  """The model a run of `cfg` trains, from its tokenizer and config alone (a classifier also
  reads its class names): what `export` rebuilds without loading the run's data."""
  if config_lib.task_name(cfg) != 'classify':
    return model_config(cfg.model, tok)
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
    saved = workdir / data.TOKENIZER_FILE if workdir else None
    if init:
      init_cfg = _init_config(init)
      self.tokenizer = tokenizer_lib.load(storage.path(init) / data.TOKENIZER_FILE)
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
    self.seq_len = d.seq_len
    cls_id = encoder_ids(self.tokenizer)[0] if self.family == 'bert' else None
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

  def shapes(self, batch_size):
    return {
      'inputs': (batch_size, self.seq_len),
      'lengths': (batch_size,),
      'labels': (batch_size,),
    }

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
  name = config_lib.task_name(cfg)
  if name == 'classify':
    return Classification(cfg, workdir, write)
  dataset = data.load(cfg.data, workdir, write=write)
  return (LanguageModel if name == 'lm' else MaskedLanguageModel)(cfg, dataset)
