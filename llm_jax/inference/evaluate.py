"""`llm-jax eval`: a run's newest checkpoint scored on its held-out split or on any data source.

The run's own task does the scoring (`Task.evaluate`/`summarize`, the numbers training logs), over
this host's devices as one data-parallel mesh. Language models also get perplexity and bits per
character and per UTF-8 byte of the text the scored tokens decode to, which compare across
tokenizers; BERT gets MLM accuracy, classifiers accuracy and macro-F1.
"""

import math

import jax

from llm_jax import rundir, storage
from llm_jax.inference.load import load_params
from llm_jax.train.trainer import Trainer


def _text_sizes(tokenizer, eval_set) -> tuple[int, int, int]:
  """(tokens, characters, UTF-8 bytes) of the scored targets; EOS is scored but is no text."""
  rows = [row for batch in eval_set for row in batch['targets'].tolist()]
  text = [tokenizer.decode([i for i in row if i != tokenizer.eos_id]) for row in rows]
  return sum(map(len, rows)), sum(map(len, text)), sum(len(t.encode()) for t in text)


def evaluate(workdir, *, source: str = '', batches: int = 0) -> dict:
  """The eval_* metrics of `workdir`'s newest checkpoint; `source` replaces the run's data and
  `batches` its number of evaluation batches (0: the run's own)."""
  cfg = rundir.read_config(workdir)
  if source:
    cfg.data.update(source=source, path='')
  if batches:
    cfg.eval.batches = batches
  # Data parallel over as many of this host's devices as split the eval batch evenly: the
  # host need not have the devices (nor the mesh) the run trained on.
  devices = jax.devices()[: math.gcd(jax.device_count(), cfg.eval.batch_size)]
  cfg.mesh.update(data=len(devices), fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1)
  # The run's saved tokenizer, whatever the source; a reader writes nothing into the run.
  trainer = Trainer(cfg, storage.path(workdir), devices, training=False)
  task = trainer.task
  step, params = load_params(
    workdir,
    task.model_cfg,
    trainer.mesh,
    cfg.mesh.rules,
    what='eval --workdir',
    target=trainer.steps.abstract.params,
  )
  result = {'step': step, 'data': source or cfg.data.path or cfg.data.source}
  result.update(trainer.evaluate(params))
  if task.name == 'lm':
    tokens, chars, nbytes = _text_sizes(task.tokenizer, task.eval_set)
    bits = result['eval_loss'] * tokens / math.log(2)
    result.update(
      eval_perplexity=math.exp(result['eval_loss']),
      eval_bits_per_char=bits / chars,
      eval_bits_per_byte=bits / nbytes,
      eval_tokens=tokens,
    )
  return result
