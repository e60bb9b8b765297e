"""GPT-2 import/export against `transformers` on small random models made here (no download)."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from tokenizers import ByteLevelBPETokenizer

from llm_jax import cli, config
from llm_jax.inference import hf, load
from llm_jax.models import configs as model_configs
from llm_jax.models import registry
from llm_jax.train import loop
from tests.test_tasks import small_config, write_labelled


def hf_gpt2(directory, *, safetensors=True):
  """A random 2-layer GPT-2 with a 300-id byte-level BPE, saved as transformers saves models."""
  tok = ByteLevelBPETokenizer()
  text = [
    'To be, or not to be, that is the question. ' * 20,
    'Now is the winter of our discontent.',
  ]
  tok.train_from_iterator(text, vocab_size=300, special_tokens=['<|endoftext|>'])
  directory.mkdir()
  tok.save_model(str(directory))
  cfg = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4)
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(cfg).eval()
  model.save_pretrained(directory, safe_serialization=safetensors)
  return model


def hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.numpy()


def our_logits(workdir, ids):
  run = load.load_model(workdir, what='test')
  return np.asarray(nnx.merge(run.graphdef, run.params)(np.asarray(ids)))


IDS = np.random.default_rng(0).integers(0, 300, (2, 32)).tolist()


@pytest.mark.parametrize('safetensors', [True, False])
def test_imported_gpt2_gives_transformers_logits(tmp_path, safetensors):
  model = hf_gpt2(tmp_path / 'hf', safetensors=safetensors)
  count = hf.import_model(tmp_path / 'hf', tmp_path / 'run')
  assert count == sum(p.numel() for p in model.parameters())  # lm_head is tied to wte
  np.testing.assert_allclose(our_logits(tmp_path / 'run', IDS), hf_logits(model, IDS), atol=1e-4)


def test_export_loads_in_transformers_with_the_same_logits_and_tokenizer(tmp_path):
  hf_gpt2(tmp_path / 'hf')
  hf.import_model(tmp_path / 'hf', tmp_path / 'run')
  hf.export_model(tmp_path / 'run', tmp_path / 'out')
  exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'out').eval()
  ours = our_logits(tmp_path / 'run', IDS)
  np.testing.assert_allclose(hf_logits(exported, IDS), ours, atol=1e-4)
  tokenizer = transformers.GPT2TokenizerFast.from_pretrained(tmp_path / 'out')
  run = load.load_model(tmp_path / 'run', what='test')
  text = 'To be, or not to be: the winter question.'
  assert tokenizer(text)['input_ids'] == run.tokenizer.encode(text).tolist()


def test_an_imported_model_samples_and_evaluates_like_a_run(tmp_path, capsys):
  hf_gpt2(tmp_path / 'hf')
  hf.import_model(tmp_path / 'hf', tmp_path / 'run')
  run = str(tmp_path / 'run')
  assert (
    cli.main(['llm-jax', 'sample', '--workdir', run, '--prompt', 'To be', '--max_new_tokens', '8'])
    == 0
  )
  assert '--- sample 1 (step 0) ---\nTo be' in capsys.readouterr().out
  assert cli.main(['llm-jax', 'eval', '--workdir', run, '--batches', '1']) == 0
  assert 'eval_perplexity' in capsys.readouterr().out


def test_import_into_a_run_directory_that_is_not_empty_needs_force(tmp_path, capsys):
  hf_gpt2(tmp_path / 'hf')
  run = tmp_path / 'run'
  loop.train(small_config('gpt_tiny', 'shakespeare', steps=4, log_every=2), run)
  capsys.readouterr()
  imported = ['llm-jax', 'hf', 'import', '--src', str(tmp_path / 'hf'), '--workdir', str(run)]
  assert cli.main(imported) == 2
  err = capsys.readouterr().err.strip()
  assert (
    err
    == f'llm-jax hf: error: hf import --workdir {run} is not empty; --force imports into it anyway'
  )
  assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == ['4']  # untouched
  assert cli.main([*imported, '--force']) == 0
  aside = [p.name for p in run.glob('checkpoints.replaced-*')]
  assert len(aside) == 1 and sorted(p.name for p in (run / aside[0]).iterdir()) == ['4']
  assert load.load_model(run, what='test').step == 0  # the import, not the old run's step 4


WORDS = 'to be or not that is the question now winter of our discontent'.split()


def hf_bert(directory):
  """A random 2-layer BertForMaskedLM with a small lower-cased WordPiece vocabulary."""
  directory.mkdir()
  specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
  pieces = specials + WORDS + [f'##{c}' for c in 'abcdefghijklmnopqrstuvwxyz'] + list('.,!?')
  (directory / 'vocab.txt').write_text('\n'.join(pieces) + '\n')
  cfg = transformers.BertConfig(
    vocab_size=len(pieces), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=64, max_position_embeddings=32,
  )  # fmt: skip
  torch.manual_seed(0)
  model = transformers.BertForMaskedLM(cfg).eval()
  model.save_pretrained(directory)
  return model


def test_bert_imports_and_exports_with_transformers_logits_and_tokenizer(tmp_path):
  model = hf_bert(tmp_path / 'hf')
  hf.import_model(tmp_path / 'hf', tmp_path / 'run')
  ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 32)).tolist()
  np.testing.assert_allclose(our_logits(tmp_path / 'run', ids), hf_logits(model, ids), atol=1e-4)
  # Padding: our lengths mask the same keys as transformers' attention_mask.
  run = load.load_model(tmp_path / 'run', what='test')
  ours = nnx.merge(run.graphdef, run.params)(np.asarray(ids), lengths=np.array([32, 20]))
  mask = torch.tensor([[1] * 32, [1] * 20 + [0] * 12])
  with torch.no_grad():
    theirs = model(torch.tensor(ids), attention_mask=mask).logits.numpy()
  np.testing.assert_allclose(ours[1, :20], theirs[1, :20], atol=1e-4)
  hf.export_model(tmp_path / 'run', tmp_path / 'out')
  exported = transformers.BertForMaskedLM.from_pretrained(tmp_path / 'out').eval()
  np.testing.assert_allclose(hf_logits(exported, ids), hf_logits(model, ids), atol=1e-5)
  tokenizer = transformers.BertTokenizerFast.from_pretrained(tmp_path / 'out')
  text = 'To be, or NOT to be: the winter question!'
  encoded = tokenizer(text, add_special_tokens=False)['input_ids']
  assert encoded == run.tokenizer.encode(text).tolist()
  assert (run.tokenizer.cls_id, run.tokenizer.mask_id, run.tokenizer.eos_id) == (2, 4, 3)


def test_other_architectures_are_refused_with_one_clear_line(tmp_path):
  hf_gpt2(tmp_path / 'hf')
  path = tmp_path / 'hf' / 'config.json'
  llama = dict(json.loads(path.read_text()), model_type='llama', architectures=['LlamaForCausalLM'])
  path.write_text(json.dumps(llama))
  with pytest.raises(hf.HFError, match=r"model_type='llama'.*reads GPT-2 .* and BERT"):
    hf.import_model(tmp_path / 'hf', tmp_path / 'run')
  with pytest.raises(hf.HFError, match='it has model.position=rope'):
    hf._check_exportable(config.preset('bert_tiny'))
  with pytest.raises(FileNotFoundError, match='config.json not found'):
    hf.import_model(tmp_path / 'nothing', tmp_path / 'run')


def our_params(preset, **model):
  """A small model's random parameters (a pure dict of arrays) and its `model` config section."""
  cfg = config.preset(preset)
  cfg.model.update(vocab_size=96, position='learned', **model)  # GPT-2 and BERT: learned
  built = registry.build(model_configs.from_section(cfg.model, 0), seed=0)
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(built, nnx.Param))), cfg.model


@pytest.mark.parametrize('preset, model_type', [('gpt_tiny', 'gpt2'), ('bert_tiny', 'bert')])
def test_each_family_table_maps_weights_back_to_the_same_parameters(preset, model_type):
  family = hf.FAMILIES[model_type]
  params, m = our_params(preset)
  weights = hf.weights_from_params(family, m, params)
  back = hf.params_from_weights(family, m, weights.__getitem__)
  jax.tree.map(np.testing.assert_array_equal, back, params)  # same tree, same arrays
  # Scanned layers (stacked on a leading axis) export to the very same weights.
  stacked, m = our_params(preset, scan_layers=True)
  scanned = hf.weights_from_params(family, m, stacked)
  assert scanned.keys() == weights.keys()
  for name, w in weights.items():
    np.testing.assert_array_equal(scanned[name], w, err_msg=name)


@pytest.mark.slow
def test_an_imported_bert_fine_tunes_with_its_own_cls_token(tmp_path):
  hf_bert(tmp_path / 'hf')
  hf.import_model(tmp_path / 'hf', tmp_path / 'run')
  data = write_labelled(tmp_path / 'passages.jsonl')
  cfg = small_config('bert_tiny', f'jsonl:{data}', task='classify', steps=10)
  cfg.data.seq_len = 32
  cfg.ckpt.init_from = str(tmp_path / 'run')
  summary = loop.train(cfg, tmp_path / 'cls')
  assert 0 < summary['eval_accuracy'] <= 1
  assert (tmp_path / 'cls' / 'tokenizer.json').read_text() == (
    tmp_path / 'run' / 'tokenizer.json'
  ).read_text()
