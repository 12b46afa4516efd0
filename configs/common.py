"""Helpers shared by the config files (big_vision's `parse_arg`, restated).

A config file's `get_config(arg)` receives the text after the colon in
`--config=configs/<file>.py:<arg>`. `parse_arg` turns it into a ConfigDict:

  parse_arg("softmax,smoke", attention="softmax", smoke=False)
    -> attention="softmax", smoke=True
  parse_arg("nystrom,smoke=False,steps=300", attention="", smoke=False, steps=0)
    -> attention="nystrom", smoke=False, steps=300

A bare word is either the name of a boolean spec entry (which it sets to True)
or, if it is the first item, the value of the first spec entry. Every value is
converted to the type of its default; unknown names raise a ValueError that
names the key.
"""
import ml_collections


def _convert(key, text, default):
  if isinstance(default, bool):
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise ValueError(f"config arg {key}={text!r}: expected a boolean")
  if default is None or isinstance(default, str):
    return text
  try:
    return type(default)(text)
  except ValueError:
    raise ValueError(f"config arg {key}={text!r}: expected "
                     f"{type(default).__name__}") from None


def parse_arg(arg, lazy=False, **spec):
  """Parses `arg` ("a,b=1,c") against `spec` (name -> default value).

  Args:
    arg: the string after the colon of `--config=file.py:arg`, or None.
    lazy: if True, names not in `spec` are accepted as strings (for configs
      that forward free-form keys); otherwise they raise ValueError.
    **spec: the accepted names and their defaults; the defaults' types are the
      types values get converted to. Order matters: a bare first word that is
      not a boolean name is the value of the first entry.

  Returns:
    A locked-shape ConfigDict with one field per spec entry.
  """
  parsed = ml_collections.ConfigDict(dict(spec))
  if not arg:
    return parsed
  names = list(spec)
  for position, item in enumerate(i.strip() for i in arg.split(",")):
    if not item:
      continue
    if "=" in item:
      key, text = (s.strip() for s in item.split("=", 1))
    elif item in spec and isinstance(spec[item], bool):
      key, text = item, "True"
    elif position == 0 and names:
      key, text = names[0], item
    else:
      key, text = item, "True"
    if key not in spec:
      if not lazy:
        raise ValueError(f"config arg {key!r} is not one of {names}")
      parsed[key] = text
      continue
    parsed[key] = _convert(key, text, spec[key])
  return parsed


def shrink_for_smoke(config):
  """The `smoke` settings every training config shares: 2 tiny steps on the
  builder's `smoke` data, logging and checkpointing every step, no progress
  bar. Task-specific shrinking (e.g. sequence length) stays in the config."""
  config.data.builder_config = "smoke"
  config.total_steps = 2
  config.batch_size = config.eval_batch_size = 8
  config.log_every = config.checkpoint_every = 1
  config.eval_every = 0
  config.optimizer.warmup_steps = 1
  config.progress = False
  if config.model.get("attention") == "yoso":
    # 2^11-bucket tables × 32 hashes dwarf a 128-token smoke input.
    config.model.attention_kwargs.update(num_hashes=4, hash_bits=6)
  return config


# Attention settings of the Nyströmformer/YOSO/MRA LRA harness, per method:
# (attention_kwargs, dropout on attention probabilities, depthwise conv on V).
# Source: mlpen/Nystromformer LRA/code/lra_config.py ("nystrom-64" with
# conv_kernel_size 35; softmax with attention_dropout 0.1).
LRA_ATTENTION = {
    "softmax": ({}, 0.1, 0),
    "nystrom": ({"num_landmarks": 64, "pinv_iterations": 6,
                 "pinv_init": "per_matrix"}, 0.0, 35),
    # mlpen/YOSO `LRA/models/yoso-v1-32`: fast hash, LSH backward; τ per task
    # below.
    "yoso": ({"num_hashes": 32, "hashing": "hadamard", "backward": "lsh"},
             0.0, 0),
    # mlpen/mra-attention `old_code/LRA/models/mra2/8` (ListOps and Image).
    # heads_per_step None: all heads at once, as the original (no loop over
    # heads, no rematerialised forward; the results are the same): 1.31×
    # faster attention forward+backward at batch 32 × 2048, 2 heads × 32 on
    # the 2-core CPU (1.11× at 784), at a few GiB of activations.
    "mra": ({"block_size": 32, "block_per_row": 8, "approx_mode": "full",
             "initial_prior_first_n_blocks": 1,
             "initial_prior_diagonal_n_blocks": 0, "heads_per_step": None},
            0.0, 0),
}
# YOSO's hash_code_len τ per LRA task (yoso-v1-32 config.json).
YOSO_HASH_BITS = {"listops": 11, "image": 10}


def lra_attention(name, task="listops"):
  """(attention_kwargs, attention_dropout, value_conv_size) for `name`.

  The LRA settings of each paper's harness; attention dropout (on the
  probabilities) exists only for softmax, the one method that forms them.
  Any entry can be overridden from the command line, e.g.
  `--config.model.attention_kwargs.num_landmarks=128`.
  """
  if name not in LRA_ATTENTION:
    raise ValueError(f"config arg attention={name!r} is not one of "
                     f"{sorted(LRA_ATTENTION)}")
  kwargs, dropout, conv = LRA_ATTENTION[name]
  kwargs = dict(kwargs)
  if name == "yoso":
    kwargs["hash_bits"] = YOSO_HASH_BITS[task]
  return kwargs, dropout, conv
