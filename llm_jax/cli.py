"""`llm-jax COMMAND [FLAGS]`: one argparse parser per command.

Commands that take a config (train, finetune, bench) read `--config FILE[:ARG]` and apply
`--config.KEY=VALUE` overrides with ml_collections' config flags on the rest of their command
line. Bad input (unknown config key or flag, invalid value, missing file) is a `UserError`: one
line on stderr naming the field or file and exit status 2, before anything is compiled.
"""

import argparse
import json
import os
import pathlib
import sys

from llm_jax import config
from llm_jax.errors import NonFiniteError, UserError

CONFIG_PREFIX = config.OVERRIDE_PREFIX


class UsageError(UserError):
  """Bad command-line input; the message is shown as is."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UsageError(message)


def _overrides(extra: list[str]) -> list[str]:
  """The `--config.KEY=VALUE` (or `--config.KEY VALUE`) arguments argparse left over; a
  leftover that is not one is an unknown flag."""
  for i, arg in enumerate(extra):
    follows_key = i > 0 and extra[i - 1].startswith(CONFIG_PREFIX) and '=' not in extra[i - 1]
    if not (arg.startswith(CONFIG_PREFIX) or follows_key):
      raise UsageError(f'unknown flag: {arg.split("=", 1)[0]}')
  return extra


def _write_json(path: str | None, result: dict) -> None:
  """A command's result as JSON at `path` (--json), when one was given."""
  if path:
    pathlib.Path(path).write_text(json.dumps(result, indent=2) + '\n')


def _train(a, cfg) -> int:
  import jax

  from llm_jax.train import loop, plan, trainer

  if a.topology and not a.dry_run:
    raise UsageError('--topology plans a run: use it with --dry_run')
  if a.dry_run:
    from llm_jax import topology

    devices = None
    if a.topology:  # the host only traces: its own accelerators stay out of the plan
      jax.config.update('jax_platforms', 'cpu')
      devices = topology.devices(a.topology, a.topology_slices)
    planned, report = plan.dry_run(trainer.Trainer(cfg, workdir=None, devices=devices))
    print(report)
    _write_json(a.json, planned)
    return 0
  if not a.workdir:
    raise UsageError('--workdir is required for train')
  summary = loop.train(cfg, a.workdir)
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


def _finetune(a, cfg) -> int:
  cfg.train.task = 'classify'
  return _train(a, cfg)


def _bench(a, cfg) -> int:
  from llm_jax import bench

  result = bench.run(cfg, steps=a.steps, warmup=a.warmup)
  print(bench.format_table(result))
  _write_json(a.json, result)
  return 0


def _prepare(a) -> int:
  from llm_jax import data
  from llm_jax.data import prepare

  d = config.base_config().data
  d.update({k: getattr(a, k) for k in d if hasattr(a, k)})  # the data.* keys prepare has flags for
  data.validate(d)
  manifest = prepare.prepare(d, a.out, workers=a.workers, progress=sys.stderr.isatty())
  splits = manifest['splits']
  print(
    f'prepared {a.out}: {splits["train"]["tokens"]:,} train tokens'
    f' ({splits["train"]["documents"]:,} documents), {splits["validation"]["tokens"]:,}'
    f' validation tokens ({splits["validation"]["documents"]:,} documents),'
    f' {manifest["tokenizer"]["kind"]} tokenizer with {manifest["tokenizer"]["vocab_size"]} ids'
  )
  print(f'train on it: llm-jax train --config ... --config.data.path={a.out}')
  return 0


def _export(a) -> int:
  from llm_jax.inference import export

  print(f'exported parameters to {export.export(a.workdir, a.out, force=a.force)}')
  return 0


def _sample(a) -> int:
  from llm_jax import rundir
  from llm_jax.inference import generate, load
  from llm_jax.train import tasks

  if a.max_new_tokens < 1 or a.num_samples < 1:
    raise UsageError('need --max_new_tokens >= 1 and --num_samples >= 1')
  # top_k against the run's vocabulary before its parameters load, or anything compiles.
  tok = rundir.read_tokenizer(a.workdir)
  generate.validate_sampling(a, '--', tok.vocab_size)
  run = load.load_model(a.workdir, what='sample --workdir', tokenizer=tok)
  if tasks.task_name(run.cfg) != 'lm':
    raise UsageError(f'sample needs a GPT language model; {a.workdir} holds a {run.cfg.model.name}'
                     f' {tasks.task_name(run.cfg)} model')  # fmt: skip
  prompts = [p for p in (a.prompt or ['\n']) for _ in range(a.num_samples)]
  encoded = [list(tok.encode(p)) for p in prompts]
  if not all(encoded):
    raise UsageError('--prompt must not be empty')
  generated = generate.generate(
    run.graphdef, run.params, encoded, max_new_tokens=a.max_new_tokens,
    temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed,
    vocab_size=tok.vocab_size, eos_id=tok.eos_id,
  )  # fmt: skip
  for i, (prompt, ids) in enumerate(zip(prompts, generated, strict=True)):
    print(f'--- sample {i + 1} (step {run.step}) ---\n{prompt}{tok.decode(ids)}')
  return 0


def _eval(a) -> int:
  from llm_jax.inference import evaluate

  result = evaluate.evaluate(a.workdir, source=a.source, batches=a.batches)
  for key, value in result.items():
    print(f'{key:<20} {value:.4f}' if isinstance(value, float) else f'{key:<20} {value}')
  _write_json(a.json, result)
  return 0


def _hf(a) -> int:
  from llm_jax.inference import hf

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


def _compare(a) -> int:
  from llm_jax import compare

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


def _launch(a) -> int:
  from llm_jax import launch

  return launch.launch(a.experiment, target=a.target, dry_run=a.dry_run, only=a.only)


def _config_flags(p) -> None:
  p.add_argument('--config', required=True, help='config file, FILE[:ARG]; then --config.KEY=V')


def _train_flags(p) -> None:
  _config_flags(p)
  p.add_argument('--workdir', help='run directory (config, tokenizer, metrics, checkpoints)')
  p.add_argument('--dry_run', action='store_true', help='compile, print memory and shardings')
  p.add_argument(
    '--topology',
    help='with --dry_run: plan for hardware this machine lacks: a TPU slice (v5e:2x2, needs'
    ' libtpu) or GPUs (h100, h100:8, h200, a100:8; needs the CUDA plugin)',
  )
  p.add_argument(
    '--topology_slices', type=int, default=1, help='that many TPU slices or GPU hosts (DCN)'
  )
  p.add_argument('--json', help='with --dry_run: also write the plan as JSON to this file')


def _bench_flags(p) -> None:
  _config_flags(p)
  p.add_argument('--steps', type=int, default=20, help='timed steps')
  p.add_argument('--warmup', type=int, default=3, help='untimed warm-up steps')
  p.add_argument('--json', help='also write the result as JSON to this file')


def _prepare_flags(p) -> None:
  d = config.base_config().data  # prepare's flags are data.* settings, with their defaults
  p.add_argument('--out', required=True, help='the directory to write the shards to')
  for name, help_text in (
    ('source', 'shakespeare, text:GLOB, jsonl:GLOB or tfds:NAME[/CONFIG]:SPLIT'),
    ('tokenizer', 'char, byte, bpe, gpt2:DIR, wordpiece:DIR or sentencepiece:FILE'),
    ('text_field', 'jsonl/tfds: the field holding the text'),
    ('text_documents', 'text: documents end at a blank_line, or one per file'),
    ('tfds_data_dir', 'tfds: where the dataset is built'),
  ):
    p.add_argument(f'--{name}', default=d[name], help=help_text)
  p.add_argument('--vocab_size', type=int, default=d.vocab_size, help='bpe vocabulary size')
  p.add_argument('--val_fraction', type=float, default=d.val_fraction, help='documents held out')
  p.add_argument('--workers', type=int, default=0, help='encoding processes (0: all cores)')


def _export_flags(p) -> None:
  p.add_argument('--workdir', required=True, help='the run to export')
  p.add_argument('--out', required=True, help='params-only checkpoint directory')
  p.add_argument('--force', action='store_true', help='replace the step already in --out')


def _sample_flags(p) -> None:
  p.add_argument('--workdir', required=True, help='a run or export directory')
  p.add_argument('--prompt', action='append', help='repeat for a batch (default: newline)')
  p.add_argument('--max_new_tokens', type=int, default=200)
  p.add_argument('--temperature', type=float, default=0.8, help='0: greedy')
  p.add_argument('--top_k', type=int, default=0, help='0: all ids')
  p.add_argument('--top_p', type=float, default=1.0, help='1: all ids')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--num_samples', type=int, default=1, help='samples per prompt')


def _eval_flags(p) -> None:
  p.add_argument('--workdir', required=True, help='a run or export directory')
  p.add_argument('--source', default='', help="data source (default: the run's held-out)")
  p.add_argument('--batches', type=int, default=0, help="0: the run's eval.batches")
  p.add_argument('--json', help='also write the result as JSON to this file')


def _hf_flags(p) -> None:
  p.add_argument('direction', choices=('import', 'export'))
  p.add_argument('--src', help='import: a GPT2LMHeadModel or BertForMaskedLM directory')
  p.add_argument('--workdir', required=True, help='import: the run to write; export: to read')
  p.add_argument('--dst', help='export: the directory to write')
  p.add_argument('--force', action='store_true', help='import: into a run directory not empty')


def _compare_flags(p) -> None:
  from llm_jax import compare

  p.add_argument('runs', nargs='*', help='run workdirs')
  p.add_argument('--plot', help='write a PNG of --metric for every run')
  p.add_argument('--metric', default='eval_loss')
  p.add_argument('--x', choices=compare.X_AXES, default='step')
  p.add_argument('--log', action='store_true', help='log-scale y axis')
  p.add_argument('--smooth', type=int, default=1, help='moving average over N points')
  p.add_argument('--format', choices=compare.FORMATS, default='table')
  p.add_argument('--wandb', metavar='ENTITY/PROJECT', help='also W&B runs of a project')
  p.add_argument('--filter', action='append', default=[], metavar='KEY=VALUE')


def _launch_flags(p) -> None:
  from llm_jax import launch

  p.add_argument('experiment', help='experiments/NAME.py')
  p.add_argument('--target', choices=launch.TARGETS, help="default: the experiment's own")
  p.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  p.add_argument('--only', help='launch only the run of this name')


# name: (what it does, its flags, its function, whether it takes a config)
COMMANDS = {
  'prepare': ('tokenize a corpus into shards', _prepare_flags, _prepare, False),
  'train': ('train a model (or --dry_run plan it)', _train_flags, _train, True),
  'finetune': ('train a classifier (train.task=classify)', _train_flags, _finetune, True),
  'bench': ("time a config's train step", _bench_flags, _bench, True),
  'export': ("write a run's parameters only", _export_flags, _export, False),
  'sample': ('generate text from a run', _sample_flags, _sample, False),
  'eval': ('score a run on held-out data', _eval_flags, _eval, False),
  'hf': ('import or export GPT-2 / BERT', _hf_flags, _hf, False),
  'compare': ('runs side by side', _compare_flags, _compare, False),
  'launch': ('run an experiment or sweep', _launch_flags, _launch, False),
}


WITHOUT_JAX = ('compare', 'launch')  # commands that never start a JAX backend


def parser() -> argparse.ArgumentParser:
  """The `llm-jax` parser: one subcommand per entry of COMMANDS."""
  top = _Parser(
    prog='llm-jax',
    description='Pretrain, evaluate and use GPT and BERT models.',
    epilog='llm-jax COMMAND -h lists its flags. For example: llm-jax train --config'
    ' configs/gpt_tiny.py --workdir runs/tiny --config.train.steps=500',
  )
  # Subparsers are _Parsers too: every command's bad input is a one-line UsageError.
  sub = top.add_subparsers(dest='command', metavar='COMMAND')
  for name, (help_text, add_flags, _, takes_config) in COMMANDS.items():
    extra = ' [--config.KEY=VALUE ...]' if takes_config else ''
    p = sub.add_parser(name, help=help_text, description=help_text + extra, allow_abbrev=False)
    add_flags(p)
  return top


def _run(command: str, args: list[str]) -> int:
  """Parses `args` for `command` and runs it."""
  _, _, function, takes_config = COMMANDS[command]
  a, extra = parser().parse_known_args([command, *args])
  if command not in WITHOUT_JAX:
    from llm_jax import runtime

    runtime.select_platforms()  # before any backend starts: no plugin noise without hardware
  if not takes_config:
    if extra:
      raise UsageError(f'unknown flag: {extra[0].split("=", 1)[0]}')
    return function(a)
  from llm_jax import distributed, runtime

  cfg = config.load(a.config, _overrides(extra))
  if command == 'bench':  # bench times compilation; a cached program would time a file read
    cfg.xla.cache_dir = ''
  runtime.configure(cfg.xla)  # both before anything touches a device
  distributed.initialize(cfg.distributed)
  return function(a, cfg)


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ('-h', '--help', 'help'):
    parser().print_help()
    return 0 if len(argv) >= 2 else 2
  command = argv[1]
  if command not in COMMANDS:
    print(f'llm-jax: unknown command {command!r}', file=sys.stderr)
    parser().print_help(sys.stderr)
    return 2
  try:
    return _run(command, argv[2:])
  except UserError as e:
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
