"""Run directories that live on local disk or in a bucket (gs://, s3://).

Every file a run keeps (config, tokenizer, metrics, facts, W&B run id) goes through `path`,
an `etils.epath.Path`: pathlib's interface, backed by fsspec for buckets (`pip install
'llm_jax[gcs]'` brings gcsfs). Orbax writes checkpoints to buckets itself. Two things stay on
the local disk: W&B's offline run files (`local_dir`), which `wandb sync` reads from a
filesystem, and prepared token shards, which are memory-mapped (`data.path`).
"""

import hashlib
import os
import pathlib

from etils import epath

BUCKET_SCHEMES = ('gs://', 's3://')
# Where a bucket run's local-only files go: $LLM_JAX_LOCAL_DIR, else ~/.cache/llm_jax.
LOCAL_ROOT_ENV = 'LLM_JAX_LOCAL_DIR'


def is_bucket(p) -> bool:
  return os.fspath(p).startswith(BUCKET_SCHEMES)


def path(p) -> epath.Path:
  """`p` as a path that works whether it is local or a bucket URL."""
  return epath.Path(p)


def local_dir(workdir) -> pathlib.Path:
  """A directory on this machine for `workdir`'s local-only files: the workdir itself when it is
  local, else one per bucket path under the local root (named after it, unique by hash)."""
  if not is_bucket(workdir):
    return pathlib.Path(workdir)
  url = os.fspath(workdir).rstrip('/')
  root = os.environ.get(LOCAL_ROOT_ENV) or pathlib.Path.home() / '.cache' / 'llm_jax'
  digest = hashlib.sha1(url.encode()).hexdigest()[:8]
  return pathlib.Path(root) / f'{url.rpartition("/")[2]}-{digest}'


def write_atomic(p, text: str) -> None:
  """Writes `text` to `p` so that a reader sees the old file or the new one, never a part: a
  local file is written beside it and renamed over it; a bucket object is replaced whole."""
  if is_bucket(p):
    path(p).write_text(text, encoding='utf-8')
    return
  target = pathlib.Path(p)
  partial = target.with_name(f'.{target.name}.{os.getpid()}.partial')
  try:
    with open(partial, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(partial, target)
  finally:
    partial.unlink(missing_ok=True)


class AppendFile:
  """A text file written by appending. A bucket object cannot be appended to, so there the whole
  text is kept and rewritten on each flush (metrics files are small: one row per log step)."""

  def __init__(self, p):
    self._path = path(p)
    self._bucket = is_bucket(p)
    if self._bucket:
      self._text = self._path.read_text(encoding='utf-8') if self._path.exists() else ''
    else:
      self._file = open(self._path, 'a', encoding='utf-8')  # noqa: SIM115 -- closed by close

  def write(self, text: str) -> None:
    if self._bucket:
      self._text += text
    else:
      self._file.write(text)

  def flush(self) -> None:
    if self._bucket:
      self._path.write_text(self._text, encoding='utf-8')
    else:
      self._file.flush()

  def close(self) -> None:
    self.flush()
    if not self._bucket:
      self._file.close()
