"""Decode speed of llm_jax's KV-cache sampler next to transformers' `generate`, in one run.

    python benchmarks/generate.py [--config configs/gpt2.py:124m] [--batch_sizes 1,32]
        [--prompt_len 128] [--new_tokens 256] [--repeats 3] [--dtype float32] [--no_hf]
        [--json out.json]

Both decode the same random weights (speed does not depend on them) greedily with no EOS, so
every row produces all new tokens. llm_jax is timed after one untimed call that compiles;
transformers after one warm-up call, on CUDA when torch sees a GPU, in the config's dtype. We
report the median of --repeats calls: new tokens per second over the whole call (prefill
included), and their ratio.
"""

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from llm_jax import config, rundir
from llm_jax.data.tokenizer import ByteTokenizer
from llm_jax.inference import export, generate, hf
from llm_jax.models import configs as model_configs
from llm_jax.models import registry


def _median_seconds(fn, repeats: int) -> float:
  fn()  # warm-up (compiles)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _ours(graphdef, params, prompts, new_tokens):
  def run():
    out = generate.generate(graphdef, params, prompts, max_new_tokens=new_tokens, temperature=0)
    assert all(len(ids) == new_tokens for ids in out)

  return run


def _hf_model(graphdef, params, cfg, directory):
  """The same weights as a transformers GPT2LMHeadModel, through `llm-jax hf export`."""
  import torch
  import transformers

  run = pathlib.Path(directory) / 'run'
  export.save_params_run(run, cfg.to_json_best_effort(), cfg.ckpt, 0, params)
  rundir.write_tokenizer(run, ByteTokenizer())  # any tokenizer: export needs one, speed does not
  hf.export_model(run, pathlib.Path(directory) / 'hf')
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  dtype = torch.bfloat16 if cfg.model.dtype == 'bfloat16' else torch.float32
  model = transformers.GPT2LMHeadModel.from_pretrained(pathlib.Path(directory) / 'hf')
  return model.to(device=device, dtype=dtype).eval(), device


def _theirs(model, device, prompts, new_tokens):
  import torch

  ids = torch.tensor(prompts, device=device)

  def run():
    with torch.no_grad():
      out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0,
      )  # fmt: skip
    if device == 'cuda':
      torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + new_tokens

  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/gpt2.py:124m')
  parser.add_argument('--batch_sizes', default='1,32')
  parser.add_argument('--prompt_len', type=int, default=128)
  parser.add_argument('--new_tokens', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--dtype', default='', help="compute dtype (default: the config's)")
  parser.add_argument('--no_hf', action='store_true', help='skip transformers')
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  cfg = config.load_file(args.config)
  cfg.model.dtype = args.dtype or cfg.model.dtype
  model_cfg = model_configs.from_section(cfg.model, ByteTokenizer().vocab_size)
  cfg.model.vocab_size = model_cfg.vocab_size  # what the exported run's config must say
  graphdef, params = nnx.split(registry.build(model_cfg, seed=0), nnx.Param)
  rng = np.random.default_rng(0)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    reference = None if args.no_hf else _hf_model(graphdef, params, cfg, tmp)
    for batch in map(int, args.batch_sizes.split(',')):
      prompts = rng.integers(0, model_cfg.vocab_size, (batch, args.prompt_len)).tolist()
      new = batch * args.new_tokens
      row = {'batch_size': batch, 'prompt_len': args.prompt_len, 'new_tokens': args.new_tokens}
      row['llm_jax_tokens_per_s'] = new / _median_seconds(
        _ours(graphdef, params, prompts, args.new_tokens), args.repeats
      )
      if reference:
        model, device = reference
        seconds = _median_seconds(_theirs(model, device, prompts, args.new_tokens), args.repeats)
        row.update(hf_device=device, hf_tokens_per_s=new / seconds)
        row['ratio'] = row['llm_jax_tokens_per_s'] / row['hf_tokens_per_s']
      rows.append(row)
      print(json.dumps(row), flush=True)
  print(f'{jax.devices()[0].device_kind}, {args.config}, dtype {cfg.model.dtype}', file=sys.stderr)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=2) + '\n')


if __name__ == '__main__':
  main()
