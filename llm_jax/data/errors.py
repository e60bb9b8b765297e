"""The one error type of the data package."""


class DataError(ValueError):
  """Unusable data or tokenizer input; the message names the setting, file or field."""
