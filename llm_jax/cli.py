"""`llm-jax COMMAND --config FILE[:ARG] [--config.key=value ...] [flags]`.

Commands: prepare, train, finetune, bench, export, sample, eval, hf, compare, launch. Bad input
(unknown config key, invalid value, missing file) ends with one line on stderr naming the field
or file and exit status 2, before anything is compiled.
"""

import argparse
import json
import os
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

USAGE = """usage: llm-jax COMMAND --config FILE[:ARG] [--config.KEY=VALUE ...] [FLAGS]

commands:
  prepare tokenize a corpus: llm-jax prepare --source=text:corpus.txt --out=data/corpus
                             [--tokenizer=char|byte|bpe|gpt2:DIR|wordpiece:DIR|sentencepiece:FILE
                              --vocab_size=N --val_fraction=F --workers=N]
  train   train a model:     llm-jax train --config configs/gpt_tiny.py --workdir runs/tiny
                             [--config.data.path=data/corpus]
  finetune train a classifier: llm-jax finetune --config configs/bert_cls.py --workdir runs/cls
                             --config.init_from=runs/bert
  bench   time a train step: llm-jax bench --config configs/gpt_tiny.py [--steps 20]
  export  params only:       llm-jax export --workdir runs/tiny --out exports/tiny [--force]
  sample  generate text:     llm-jax sample --workdir runs/tiny --prompt "To be" [--prompt ...]
                             [--max_new_tokens 200 --temperature 0.8 --top_k K --top_p P
                              --seed S --num_samples N]
  eval    score a run:       llm-jax eval --workdir runs/tiny [--source SPEC --batches N
                              --json out.json]
  hf      GPT-2/BERT interop: llm-jax hf import --src HF_DIR --workdir runs/gpt2 [--force]
                             llm-jax hf export --workdir runs/tiny --dst HF_DIR
  launch  an experiment:     llm-jax launch experiments/shakespeare_lr_sweep.py
                             [--target=local|tpu|slurm --dry_run --only=RUN_NAME]
  compare runs side by side: llm-jax compare runs/a runs/b [--plot loss.png --metric eval_loss
                             --x step|tokens|time --log --smooth N --format table|markdown|csv]
                             [--wandb ENTITY/PROJECT --filter group=NAME]
"""


def _define_flags(argv) -> flags.FlagValues:
  """A fresh flag set for `argv`, so a failed parse leaves nothing behind."""
  fv = flags.FlagValues()
  # config_flags reads `--config.*` overrides from sys.argv unless given the argv explicitly.
  config_flags.DEFINE_config_file(
    'config', None, 'Config file, FILE[:ARG].', flag_values=fv, lock_config=True, sys_argv=argv
  )
  flags.DEFINE_string(
    'workdir', None, 'train: run directory (metrics, config, tokenizer).', flag_values=fv
  )
  flags.DEFINE_bool(
    'dry_run', False, 'train: compile, print per-device memory and shardings, exit.', flag_values=fv
  )
  flags.DEFINE_string(
    'topology',
    None,
    'train --dry_run: plan for hardware this machine lacks: a TPU slice (v5e:2x2, needs libtpu)'
    ' or GPUs (h100, h100:8, h200, a100:8; needs the CUDA plugin).',
    flag_values=fv,
  )
  flags.DEFINE_integer(
    'topology_slices',
    1,
    'train --dry_run --topology: that many TPU slices or GPU hosts (joined over DCN).',
    flag_values=fv,
  )
  flags.DEFINE_integer('steps', 20, 'bench: timed steps.', flag_values=fv)
  flags.DEFINE_integer('warmup', 3, 'bench: untimed warm-up steps.', flag_values=fv)
  flags.DEFINE_enum(
    'reference',
    'auto',
    ['auto', 'on', 'off'],
    'bench: also time the plain-JAX reference step (auto: on CPU).',
    flag_values=fv,
  )
  flags.DEFINE_string(
    'out', None, 'export: params-only checkpoint dir; prepare: shard dir.', flag_values=fv
  )
  flags.DEFINE_bool('force', False, 'export: replace the step already in --out.', flag_values=fv)
  flags.DEFINE_string(
    'json',
    None,
    'bench, train --dry_run: also write the result as JSON to this file.',
    flag_values=fv,
  )
  _define_prepare_flags(fv)
  return fv


def _define_prepare_flags(fv) -> None:
  """prepare's flags: the data.* settings it reads, defaulting to the base config's."""
  from llm_jax import config

  d = config.base_config().data
  for name, help_text in (
    ('source', 'data source: shakespeare, text:GLOB, jsonl:GLOB or tfds:NAME[/CONFIG]:SPLIT.'),
    ('tokenizer', 'char, byte, bpe, gpt2:DIR, wordpiece:DIR or sentencepiece:FILE.'),
    ('text_field', 'jsonl/tfds: the field holding the text.'),
    ('text_documents', 'text: documents end at a blank_line, or one per file.'),
    ('tfds_data_dir', 'tfds: where the dataset is built.'),
  ):
    flags.DEFINE_string(name, d[name], f'prepare: {help_text}', flag_values=fv)
  flags.DEFINE_integer('vocab_size', d.vocab_size, 'prepare: bpe vocabulary size.', flag_values=fv)
  flags.DEFINE_float(
    'val_fraction', d.val_fraction, 'prepare: share of documents held out.', flag_values=fv
  )
  flags.DEFINE_integer('workers', 0, 'prepare: encoding processes (0: all cores).', flag_values=fv)


class UsageError(Exception):
  """Bad command-line input; the message is shown as is."""


def _config_path(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
  return None


def _parse(argv, *, needs_config: bool = True) -> flags.FlagValues:
  """Parsed flags with the config loaded; UsageError with one line on any bad input."""
  path = _config_path(argv)
  if path is None and not needs_config:
    fv = _define_flags(argv)
    try:
      fv(argv)
    except flags.Error as e:
      raise UsageError(str(e).splitlines()[0]) from None
    return fv
  if path is None:
    raise UsageError('--config FILE is required')
  file = path.split(':', 1)[0]
  if not pathlib.Path(file).is_file():
    raise UsageError(f'config file not found: {file}')
  fv = _define_flags(argv)
  try:
    fv(argv)
    fv.config  # noqa: B018 -- loads the file and applies overrides now, inside this try
    return fv
  except flags.UnrecognizedFlagError as e:
    name = e.flagname.removeprefix('config.')
    if e.flagname.startswith('config.'):
      raise UsageError(f'unknown config key: {name}') from None
    raise UsageError(f'unknown flag: --{name}') from None
  except (AttributeError, KeyError) as e:
    # A locked ConfigDict rejects an unknown override key: "'stepz'\nDid you mean ...".
    key, *hint = str(e).strip('"\'').replace('\\n', '\n').split('\n')
    key = key.strip("\\'")
    paths = [
      a.split('=', 1)[0].removeprefix('--config.') for a in argv if a.startswith('--config.')
    ]
    path = next((p for p in paths if key in p.split('.')), key)
    raise UsageError(
      f'unknown config key: {path}' + (f' ({hint[0].strip()})' if hint else '')
    ) from None
  except flags.Error as e:
    # config_flags wraps errors raised while loading the file; their last line is the cause.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    raise UsageError(lines[-1].split('ConfigError: ')[-1]) from None


def _write_json(path: str | None, result: dict) -> None:
  """A command's result as JSON at `path` (--json), when one was given."""
  if path:
    pathlib.Path(path).write_text(json.dumps(result, indent=2) + '\n')


def _train(fv) -> int:
  import jax

  from llm_jax.train import loop

  if fv.topology and not fv.dry_run:
    raise UsageError('--topology plans a run: use it with --dry_run')
  if fv.dry_run:
    from llm_jax import topology
    from llm_jax.train import plan

    devices = None
    if fv.topology:  # the host only traces: its own accelerators stay out of the plan
      jax.config.update('jax_platforms', 'cpu')
      devices = topology.devices(fv.topology, fv.topology_slices)
    planned, report = plan.dry_run(loop.Trainer(fv.config, workdir=None, devices=devices))
    print(report)
    _write_json(fv.json, planned)
    return 0
  if not fv.workdir:
    raise UsageError('--workdir is required for train')
  summary = loop.train(fv.config, fv.workdir)
  if jax.process_index() != 0:  # only process 0 prints
    return 0
  if 'preempted_at' in summary:
    print(f'preempted: saved step {int(summary["preempted_at"])}; rerun the same command to resume')
    return 0
  keys = ('eval_loss', 'eval_accuracy', 'eval_macro_f1', 'eval_mlm_accuracy', 'loss')
  final = ', '.join(f'{k} {summary[k]:.4f}' for k in keys if k in summary)
  if final:
    print(f'final {final}')
  return 0


def _finetune(fv) -> int:
  fv.config.train.task = 'classify'
  return _train(fv)


def _bench(fv) -> int:
  from llm_jax import bench

  reference = {'auto': None, 'on': True, 'off': False}[fv.reference]
  result = bench.run(fv.config, steps=fv.steps, warmup=fv.warmup, reference=reference)
  print(bench.format_table(result))
  _write_json(fv.json, result)
  return 0


def _prepare(fv) -> int:
  from llm_jax import config
  from llm_jax.data import prepare

  if not fv.out:
    raise UsageError('prepare needs --out DIR (and --source, default shakespeare)')
  d = config.base_config().data
  d.update({k: fv[k].value for k in d if k in fv})  # the data.* keys prepare has flags for
  config.validate_data(d)
  manifest = prepare.prepare(d, fv.out, workers=fv.workers, progress=sys.stderr.isatty())
  splits = manifest['splits']
  print(
    f'prepared {fv.out}: {splits["train"]["tokens"]:,} train tokens'
    f' ({splits["train"]["documents"]:,} documents), {splits["validation"]["tokens"]:,}'
    f' validation tokens ({splits["validation"]["documents"]:,} documents),'
    f' {manifest["tokenizer"]["kind"]} tokenizer with {manifest["tokenizer"]["vocab_size"]} ids'
  )
  print(f'train on it: llm-jax train --config ... --config.data.path={fv.out}')
  return 0


class _ArgumentParser(argparse.ArgumentParser):
  def error(self, message):
    raise UsageError(message)


def _compare(args) -> int:
  from llm_jax import compare

  parser = _ArgumentParser(prog='llm-jax compare', description='Compare runs.')
  parser.add_argument('runs', nargs='*', help='run workdirs')
  parser.add_argument('--plot', help='write a PNG of --metric for every run')
  parser.add_argument('--metric', default='eval_loss')
  parser.add_argument('--x', choices=compare.X_AXES, default='step')
  parser.add_argument('--log', action='store_true', help='log-scale y axis')
  parser.add_argument('--smooth', type=int, default=1, help='moving average over N points')
  parser.add_argument('--format', choices=compare.FORMATS, default='table')
  parser.add_argument('--wandb', metavar='ENTITY/PROJECT', help='also W&B runs of a project')
  parser.add_argument('--filter', action='append', default=[], metavar='KEY=VALUE')
  a = parser.parse_args(args)
  if a.smooth < 1:
    raise UsageError(f'--smooth={a.smooth} must be >= 1')
  filters = {}
  for item in a.filter:
    key, sep, value = item.partition('=')
    if not sep:
      raise UsageError(f'--filter {item!r}: write KEY=VALUE')
    filters[key] = value
  runs = [compare.load_workdir(path) for path in a.runs]
  if a.wandb:
    runs += compare.load_wandb(a.wandb, filters)
  if not runs:
    raise UsageError('compare needs run workdirs, or --wandb ENTITY/PROJECT')
  print(compare.report(runs, a.format))
  if a.plot:
    compare.plot(runs, a.plot, metric=a.metric, x=a.x, log=a.log, window=a.smooth)
    print(f'\nplot: {a.plot}')
  return 0


def _launch(args) -> int:
  from llm_jax import launch

  parser = _ArgumentParser(prog='llm-jax launch', description='Launch an experiment.')
  parser.add_argument('experiment', help='experiments/NAME.py')
  parser.add_argument('--target', choices=launch.TARGETS, help="default: the experiment's own")
  parser.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  parser.add_argument('--only', help='launch only the run of this name')
  a = parser.parse_args(args)
  return launch.launch(a.experiment, target=a.target, dry_run=a.dry_run, only=a.only)


def _export(fv) -> int:
  from llm_jax.train import loop

  if not (fv.workdir and fv.out):
    raise UsageError('export needs --workdir RUN and --out DIR')
  print(f'exported parameters to {loop.export(fv.workdir, fv.out, force=fv.force)}')
  return 0


COMMANDS = {
  'prepare': _prepare,
  'train': _train,
  'finetune': _finetune,
  'bench': _bench,
  'export': _export,
}


def _sample(args) -> int:
  from llm_jax import config, data, generate, storage
  from llm_jax.data import tokenizer as tokenizer_lib
  from llm_jax.train import loop

  parser = _ArgumentParser(prog='llm-jax sample', description='Sample text from a run.')
  parser.add_argument('--workdir', required=True, help='a run or export directory')
  parser.add_argument('--prompt', action='append', help='repeat for a batch (default: newline)')
  parser.add_argument('--max_new_tokens', type=int, default=200)
  parser.add_argument('--temperature', type=float, default=0.8, help='0: greedy')
  parser.add_argument('--top_k', type=int, default=0, help='0: all ids')
  parser.add_argument('--top_p', type=float, default=1.0, help='1: all ids')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_samples', type=int, default=1, help='samples per prompt')
  a = parser.parse_args(args)
  if a.max_new_tokens < 1 or a.num_samples < 1:
    raise UsageError('need --max_new_tokens >= 1 and --num_samples >= 1')
  # top_k against the run's vocabulary before its parameters load, or anything compiles.
  vocab = tokenizer_lib.load(storage.path(a.workdir) / data.TOKENIZER_FILE).vocab_size
  config.validate_sampling(a, '--', vocab)
  run = loop.load_model(a.workdir, what='sample --workdir')
  if config.task_name(run.cfg) != 'lm':
    raise UsageError(f'sample needs a GPT language model; {a.workdir} holds a {run.cfg.model.name}'
                     f' {config.task_name(run.cfg)} model')  # fmt: skip
  prompts = [p for p in (a.prompt or ['\n']) for _ in range(a.num_samples)]
  encoded = [list(run.tokenizer.encode(p)) for p in prompts]
  if not all(encoded):
    raise UsageError('--prompt must not be empty')
  generated = generate.generate(
    run.graphdef, run.params, encoded, max_new_tokens=a.max_new_tokens,
    temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed,
    vocab_size=run.tokenizer.vocab_size, eos_id=run.tokenizer.eos_id,
  )  # fmt: skip
  for i, (prompt, ids) in enumerate(zip(prompts, generated, strict=True)):
    print(f'--- sample {i + 1} (step {run.step}) ---\n{prompt}{run.tokenizer.decode(ids)}')
  return 0


def _eval(args) -> int:
  from llm_jax import evaluate

  parser = _ArgumentParser(prog='llm-jax eval', description='Evaluate a run.')
  parser.add_argument('--workdir', required=True, help='a run or export directory')
  parser.add_argument('--source', default='', help="data source (default: the run's held-out)")
  parser.add_argument('--batches', type=int, default=0, help="0: the run's eval.batches")
  parser.add_argument('--json', help='also write the result as JSON to this file')
  a = parser.parse_args(args)
  result = evaluate.evaluate(a.workdir, source=a.source, batches=a.batches)
  for key, value in result.items():
    print(f'{key:<20} {value:.4f}' if isinstance(value, float) else f'{key:<20} {value}')
  _write_json(a.json, result)
  return 0


def _hf(args) -> int:
  from llm_jax import hf

  parser = _ArgumentParser(prog='llm-jax hf', description='Hugging Face import/export.')
  parser.add_argument('direction', choices=('import', 'export'))
  parser.add_argument('--src', help='import: a GPT2LMHeadModel or BertForMaskedLM directory')
  parser.add_argument('--workdir', required=True, help='import: the run to write; export: to read')
  parser.add_argument('--dst', help='export: the directory to write')
  parser.add_argument(
    '--force', action='store_true', help='import: into a run directory that is not empty'
  )
  a = parser.parse_args(args)
  if a.direction == 'import':
    if not a.src:
      raise UsageError('hf import needs --src HF_DIR')
    count = hf.import_model(a.src, a.workdir, force=a.force)
    print(f'imported {count:,} parameters from {a.src} into {a.workdir}')
  else:
    if not a.dst:
      raise UsageError('hf export needs --dst HF_DIR')
    print(f'exported {a.workdir} to {hf.export_model(a.workdir, a.dst)}')
  return 0


ARGUMENT_COMMANDS = {
  'compare': _compare,
  'launch': _launch,
  'sample': _sample,
  'eval': _eval,
  'hf': _hf,
}


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ('-h', '--help', 'help'):
    print(USAGE)
    return 0 if len(argv) >= 2 else 2
  command = argv[1]
  if command not in COMMANDS and command not in ARGUMENT_COMMANDS:
    print(f'llm-jax: unknown command {command!r}\n{USAGE}', file=sys.stderr)
    return 2
  from llm_jax import distributed, runtime
  from llm_jax.checkpoint import CheckpointError
  from llm_jax.compare import CompareError
  from llm_jax.config import ConfigError
  from llm_jax.data import DataError
  from llm_jax.hf import HFError
  from llm_jax.launch import LaunchError
  from llm_jax.train.loop import NonFiniteError

  runtime.select_platforms()  # before any backend starts: no plugin noise without hardware
  try:
    if command in ARGUMENT_COMMANDS:  # positional arguments: their own parsers
      return ARGUMENT_COMMANDS[command](argv[2:])
    fv = _parse([argv[0]] + argv[2:], needs_config=command not in ('export', 'prepare'))
    if fv.config is not None:  # both before anything touches a device
      if command == 'bench':  # bench times compilation; a cached program would time a file read
        fv.config.xla.cache_dir = ''
      runtime.configure(fv.config.xla)
      distributed.initialize(fv.config.distributed)
    return COMMANDS[command](fv)
  except (
    UsageError,
    ConfigError,
    DataError,
    CheckpointError,
    CompareError,
    LaunchError,
    HFError,
    distributed.DistributedError,
    FileNotFoundError,
  ) as e:
    print(f'llm-jax {command}: error: {e}', file=sys.stderr)
    return 2
  except NonFiniteError as e:
    print(f'llm-jax {command}: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f'llm-jax {command}: interrupted', file=sys.stderr)
    return 130


def run() -> None:
  """Console-script entry point."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())
