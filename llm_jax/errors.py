"""The one base class of every error that a user's input causes.

The CLI prints a `UserError` as one line (`llm-jax CMD: error: MESSAGE`) and exits with status 2;
anything else is a bug and keeps its traceback. Each package raises its own subclass (ConfigError,
DataError, CheckpointError, HFError, ...) whose message names the field, file or value.
"""


class UserError(Exception):
  """Bad input: a config value, a file, a flag. The message is shown as is, on one line."""


class NonFiniteError(RuntimeError):
  """Training met a non-finite loss or gradient under train.on_nonfinite='halt' (exit status 1:
  not bad input, but a run that cannot go on; the last good checkpoint is kept)."""


class MissingFile(UserError, FileNotFoundError):
  """A file or directory the input names is not there; the message names it."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the field."""


def check(ok: bool, message: str) -> None:
  """ConfigError(message) unless `ok`: how each owner of a config section validates it."""
  if not ok:
    raise ConfigError(message)


def choice(value, name: str, choices) -> None:
  """ConfigError naming field `name` unless `value` is one of `choices`."""
  check(value in choices, f'{name}={value!r} must be one of {", ".join(map(str, choices))}')
