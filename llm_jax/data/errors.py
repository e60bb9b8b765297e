"""The one error type of the data package."""

from llm_jax.errors import UserError


class DataError(UserError, ValueError):
  """Unusable data or tokenizer input; the message names the setting, file or field."""
