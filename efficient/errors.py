"""The one exception type that means "the user's config or files are wrong".

`experiments.train` prints such errors as a single line and exits non-zero;
anything else is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
  """A config value, or a file or directory it names, is unusable."""
