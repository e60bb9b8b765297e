"""Fine-tune a classifier: by default, the genre (comedy / history / tragedy) of 128-character
passages of the embedded plays, scored on passages of six plays it never saw.

  llm-jax finetune --config configs/bert_cls.py --workdir W --config.init_from=PRETRAIN_WORKDIR

The classifier takes the architecture and tokenizer of `init_from` (a BERT or a GPT run, or an
export); without it, a fresh `model.*` backbone: bert_tiny, or configs/bert_cls.py:cpu for
configs/bert.py:cpu's size (the from-scratch baseline). Other data: data.source=jsonl:FILE with
`text` and `label` fields, or a TFDS dataset, e.g. data.source=tfds:glue/sst2:train with
data.text_field=sentence.
"""

from llm_jax.config import ConfigError, preset

BACKBONES = {None: 'bert_tiny', 'cpu': 'bert_shakespeare_cpu'}


def get_config(arg=None):
  if arg not in BACKBONES:
    raise ConfigError(f'configs/bert_cls.py: unknown argument {arg!r}; use no argument or :cpu')
  c = preset(BACKBONES[arg])
  c.train.update(task='classify', steps=600, batch_size=32, log_every=50)
  c.data.update(source='genre', seq_len=128, passage_chars=128)
  c.eval.update(every_steps=200, batches=1, batch_size=64)
  c.optimizer.update(lr=5e-4, warmup_steps=60, min_lr_ratio=0.0, weight_decay=0.01)
  c.sample.max_new_tokens = 0
  with c.unlocked():
    c.init_from = c.ckpt.get_ref('init_from')  # --config.init_from is ckpt.init_from
  return c
