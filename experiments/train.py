r"""Trains and evaluates a config: the project's one training CLI.

  python -m experiments.train --config=configs/listops.py:softmax,smoke \
      --workdir=/tmp/listops [--config.optimizer.lr=3e-4 ...]

Kept short on purpose (flax examples' main.py): the work happens in
`efficient.train.trainer.train_and_evaluate`, which notebooks call directly.
Config errors (unknown key, wrong type, missing data) print one line and exit
with status 2; a non-finite loss exits with status 3.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from efficient.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, `path.py:arg`.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output directory; re-using it resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message, status):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def _one_line(error, argv):
  """The most useful single line of a flag/config error."""
  lines = [l.strip() for l in str(error).strip().splitlines() if l.strip()]
  if isinstance(error, (AttributeError, KeyError)):
    # config_flags reports an unknown key as a bare repr of the key name.
    key = str(error).strip("'\"")
    given = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    named = [g for g in given if g.endswith("." + key)] or given
    return f"unknown config key {named[0] if named else key}"
  if len(lines) > 1:  # A wrapped traceback: flag context + the real error.
    return f"{lines[0]} {lines[-1]}"
  return lines[0] if lines else repr(error)


def _parse_flags(argv):
  """absl flag parsing, but errors become one line (not a usage dump)."""
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.keys()  # config_flags defers a missing-file error to here.
    return rest
  except (flags.Error, AttributeError, KeyError, OSError, TypeError,
          ValueError) as e:
    _fail(_one_line(e, argv), 2)


class _QuietLibraries:
  """Drops INFO lines of orbax/tfds/jax (one per save); warnings still show."""
  NOISY = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/", "/etils/")

  def filter(self, record):
    import logging as std_logging  # pylint: disable=g-import-not-at-top
    return (record.levelno >= std_logging.WARNING
            or not any(n in record.pathname for n in self.NOISY))


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # pylint: disable=g-import-not-at-top
  from efficient.train import sharding
  from efficient.train import trainer
  sharding.maybe_initialize_distributed()
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    _fail(str(e), 2)
  except FloatingPointError as e:
    logging.error("%s", e)
    _fail(str(e), 3)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
