import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llm_jax import checkpoint, config, validation
from llm_jax.data import DataError
from llm_jax.models import registry
from llm_jax.models.configs import GPTConfig
from llm_jax.train import loop, losses, tasks
from tests.test_train import read_rows

WORDS = {'sea': 'ship sail wave tide salt storm', 'land': 'hill field stone road farm wood'}
SHARED = 'the a of and to in'.split()


def write_labelled(path, n=400, seed=0):
  """JSON Lines of 12-word passages: 60% 'sea', 40% 'land', told apart by their nouns."""
  rng = np.random.default_rng(seed)
  with open(path, 'w') as f:
    for _ in range(n):
      label = 'sea' if rng.random() < 0.6 else 'land'
      words = rng.choice(WORDS[label].split() + SHARED, 12)
      f.write(json.dumps({'text': ' '.join(words), 'label': label}) + '\n')
  return path


def small_config(preset, source, **train):
  c = config.preset(preset)
  c.train.update(dict(steps=40, batch_size=16, log_every=10), **train)
  c.data.update(source=source, seq_len=64, val_fraction=0.25)
  c.eval.update(every_steps=0, batches=2, batch_size=16)
  c.optimizer.update(lr=3e-3, warmup_steps=5)
  c.sample.max_new_tokens = 0
  c.wandb.mode = 'disabled'
  return c


def test_masking_statistics_over_many_draws():
  eos, cls, mask, pad, vocab = 3, 50, 51, 0, 50
  tokens = jax.random.randint(jax.random.key(0), (256, 512), 1, vocab)
  tokens = tokens.at[:, 0].set(cls).at[:, ::64].set(eos).at[:, -8:].set(pad)
  never = (pad, eos, cls, mask)
  replacements = losses.replacement_ids(vocab, never)
  masked, chosen = losses.mask_tokens(
    jax.random.key(1), tokens, rate=0.15, mask_id=mask, replacements=replacements, never=never
  )
  special = jnp.isin(tokens, jnp.asarray(never))
  assert not jnp.any(chosen & special) and jnp.all(masked[special] == tokens[special])
  assert float(chosen[~special].mean()) == pytest.approx(0.15, abs=0.003)
  became_mask = masked[chosen] == mask
  kept = masked[chosen] == tokens[chosen]
  random = ~became_mask & ~kept
  assert float(became_mask.mean()) == pytest.approx(0.8, abs=0.01)
  # A random replacement can hit the original id (1 time in the 48 it draws from), counted kept.
  assert len(replacements) == 48
  assert float(kept.mean()) == pytest.approx(0.1 + 0.1 / 48, abs=0.01)
  assert float(random.mean()) == pytest.approx(0.1 - 0.1 / 48, abs=0.01)
  replaced = masked[chosen][random]
  assert jnp.all(replaced < vocab) and not jnp.any(jnp.isin(replaced, jnp.asarray(never)))
  assert not jnp.any(masked[~chosen] != tokens[~chosen])


def test_mlm_never_draws_a_wordpiece_special_as_the_random_id(tmp_path):
  """BERT's vocabulary holds [PAD] [UNK] [CLS] [SEP] [MASK] among its ids: none of them may be
  chosen for prediction or drawn as a replacement."""
  specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
  words = [f'w{i}' for i in range(20)]
  vocab = specials[:2] + words[:5] + specials[2:] + words[5:]
  (tmp_path / 'vocab.txt').write_text('\n'.join(vocab))
  (tmp_path / 'corpus.txt').write_text('\n\n'.join(' '.join(words) for _ in range(40)))
  cfg = small_config('bert_tiny', f'text:{tmp_path / "corpus.txt"}')
  cfg.data.update(tokenizer=f'wordpiece:{tmp_path}', val_fraction=0.5)
  task = tasks.make(cfg, None)
  ids = {task.tokenizer._tok.token_to_id(t) for t in specials}
  assert ids == {0, 1, 7, 8, 9} and ids <= set(task.mask['never'])
  assert not ids & set(task.mask['replacements'].tolist())
  tokens = jax.random.randint(jax.random.key(0), (64, 128), 0, task.tokenizer.vocab_size)
  masked, chosen = losses.mask_tokens(jax.random.key(1), tokens, **task.mask)
  assert not jnp.any(chosen & jnp.isin(tokens, jnp.asarray(list(ids))))
  replaced = masked[chosen & (masked != tokens) & (masked != task.mask_id)]
  assert replaced.size > 50 and not jnp.any(jnp.isin(replaced, jnp.asarray(list(ids))))


@pytest.mark.slow
@pytest.mark.parametrize('family', ['bert', 'gpt'])
def test_pretrain_then_finetune_beats_the_majority_class(tmp_path, family):
  data = write_labelled(tmp_path / 'passages.jsonl')
  pretrain = small_config(f'{family}_tiny', f'jsonl:{data}')
  loop.train(pretrain, tmp_path / 'pre')
  rows = [r for r in read_rows(tmp_path / 'pre') if 'loss' in r]
  assert rows[-1]['loss'] < rows[0]['loss'] - 0.3  # MLM / LM loss falls
  if family == 'bert':
    assert 0 < rows[-1]['mlm_accuracy'] <= 1
  finetune = small_config('bert_tiny', f'jsonl:{data}', task='classify', steps=60)
  finetune.ckpt.init_from = str(tmp_path / 'pre')
  summary = loop.train(finetune, tmp_path / 'cls')
  majority = 0.6
  assert summary['eval_accuracy'] > majority + 0.2, summary
  assert 0 < summary['eval_macro_f1'] <= 1
  evals = [r for r in read_rows(tmp_path / 'cls') if 'eval_accuracy' in r]
  assert evals[-1]['eval_accuracy'] == summary['eval_accuracy']
  saved = (tmp_path / 'cls' / 'tokenizer.json').read_text()
  assert saved == (tmp_path / 'pre' / 'tokenizer.json').read_text()  # the pretraining ids


def test_bad_fine_tuning_input_is_one_clear_error(tmp_path):
  data = write_labelled(tmp_path / 'passages.jsonl', n=20)
  with open(data, 'a') as f:
    f.write(json.dumps({'text': 'sky and cloud', 'label': 'sky'}) + '\n')
  cfg = small_config('bert_tiny', f'jsonl:{data}', task='classify')
  cfg.data.classes = ('sea', 'land')
  with pytest.raises(DataError, match=r"passages.jsonl:21: label 'sky' is not one of data.classes"):
    tasks.make(cfg, None)
  cfg.data.source = f'text:{data}'
  with pytest.raises(config.ConfigError, match='classification needs labelled data'):
    validation.validate(cfg, num_devices=8, backend='cpu')


@pytest.mark.slow
def test_an_init_checkpoint_of_another_architecture_or_context_is_refused(tmp_path):
  data = write_labelled(tmp_path / 'passages.jsonl', n=100)
  loop.train(small_config('gpt_tiny', f'jsonl:{data}', steps=6), tmp_path / 'gpt')
  bert = small_config('bert_tiny', f'jsonl:{data}', steps=6)
  bert.ckpt.init_from = str(tmp_path / 'gpt')
  with pytest.raises(checkpoint.CheckpointError, match='do not fit this model'):
    loop.train(bert, tmp_path / 'bert')
  cls = small_config('bert_tiny', f'jsonl:{data}', task='classify')
  cls.ckpt.init_from = str(tmp_path / 'gpt')  # gpt_tiny: 64 positions
  cls.model.block_size = cls.data.seq_len = 128
  with pytest.raises(config.ConfigError, match=r'data.seq_len=128 is longer than the position'):
    tasks.make(cls, None)


def test_tfds_labels_take_the_datasets_class_names(tmp_path):
  import tensorflow_datasets as tfds

  cfg = small_config('bert_tiny', 'tfds:imdb_reviews:train', task='classify')
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    task = tasks.make(cfg, tmp_path)
  assert task.classes == ('neg', 'pos') and task.model_cfg.num_classes == 2
  assert len(task.train_examples['labels']) == 30 and task.num_eval_examples == 10
  assert set(task.train_examples['labels'].tolist()) <= {0, 1}


def test_chunked_cross_entropy_equals_the_plain_loss_and_holds_fewer_logits():
  cfg = GPTConfig(vocab_size=2048, block_size=64, n_layer=1, n_head=2, n_embd=32)
  graphdef, params = nnx.split(registry.build(cfg, seed=0), nnx.Param)
  x = jax.random.randint(jax.random.key(0), (16, 65), 0, 2048)
  batch = {'inputs': x[:, :-1], 'targets': x[:, 1:]}

  def grad_fn(chunk):
    loss = lambda p: losses.lm_loss(nnx.merge(graphdef, p), batch, None, None, chunk=chunk)[0]
    return jax.jit(jax.value_and_grad(loss))

  (plain, plain_grads), (chunked, chunked_grads) = grad_fn(0)(params), grad_fn(8)(params)
  np.testing.assert_allclose(chunked, plain, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(chunked_grads), jax.tree.leaves(plain_grads), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # The plain loss keeps (16, 64, 2048) fp32 logits and their softmax (8 MiB each) at once.
  temp = lambda chunk: grad_fn(chunk).lower(params).compile().memory_analysis().temp_size_in_bytes
  assert temp(0) - temp(8) > 1.5 * 16 * 64 * 2048 * 4


def test_mlm_logits_at_the_chosen_positions_only_give_the_dense_loss_and_gradients():
  cfg = small_config('bert_tiny', 'shakespeare')
  cfg.data.seq_len = 128
  task = tasks.make(cfg, None)
  assert task.predictions == 37  # of 128: 19.2 expected + 4 sd (16.2), rounded up, + 1
  graphdef, params = nnx.split(registry.build(task.model_cfg, seed=0), nnx.Param)
  batch = {k: jnp.asarray(v) for k, v in task.eval_set[0].items()}
  assert int(batch['weights'].sum(1).max()) <= task.predictions

  def dense(p):
    logits = nnx.merge(graphdef, p)(batch['inputs'])
    args = (logits, batch['targets'], batch['weights'])
    return losses.cross_entropy(*args), losses.accuracy(*args)

  def sparse(p):
    model = nnx.merge(graphdef, p)
    return task._scored(model, batch['inputs'], batch['targets'], batch['weights'], None)

  (want, want_acc), want_grads = jax.value_and_grad(dense, has_aux=True)(params)
  (got, (got_metrics, weight)), got_grads = jax.value_and_grad(sparse, has_aux=True)(params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(got_metrics['mlm_accuracy']) == float(want_acc)
  assert float(weight) == float(batch['weights'].sum())  # the positions its mean is over
  for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
