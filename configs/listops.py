r"""ListOps (LRA) with the Nyströmformer/YOSO/MRA harness; the arg picks attention.

The default reproduces that harness (mlpen/Nystromformer `LRA/code/
lra_config.py`): ListOps as LRA generates it (lengths 500-2000, padded to
2048), a 2-layer width-64 pre-norm encoder, batch 32, AdamW (eps 1e-6, no
weight decay) under PyTorch's OneCycleLR (peak 1e-4 at step 1000, linear),
5000 steps, validation every 50 steps, and its report: test accuracy of the
weights with the best validation accuracy (`results.json`'s
`best/test/accuracy`; `test/accuracy` is the final weights'). On a CPU,
`--config.eval_every=500` saves an hour of evaluations (coarser selection).

  python -m experiments.train --config=configs/listops.py:softmax \
      --workdir=runs/listops_softmax

`variant=quick` is the CPU quickstart: ListOps with lengths 20-256 (padded
to 256), 2500 steps at lr 1e-3; about 6 min on 2 CPU cores, where the full
task would take hours there:

  python -m experiments.train --config=configs/listops.py:softmax,variant=quick \
      --workdir=runs/quickstart

`smoke` shrinks everything to seconds (tests, CI):

  python -m experiments.train --config=configs/listops.py:softmax,smoke \
      --workdir=/tmp/smoke

Any field can be overridden: `--config.optimizer.lr=3e-4`,
`--config.mesh="(('data',4),('fsdp',2),('model',1))"`.
"""
import ml_collections
from ml_collections import config_dict

from configs import common

# Per variant: (tfds builder config, padded length, steps, warm-up, eval
# every, peak lr). `quick` uses a 10x larger lr than the harness: with 2500
# steps, 1e-4 barely leaves the majority class.
VARIANTS = {
    "lra": ("lra", 2048, 5000, 1000, 50, 1e-4),
    "quick": ("quick", 256, 2500, 250, 500, 1e-3),
}


def get_config(arg=None):
  """Returns the ListOps config; arg = "<attention>[,variant=...][,smoke]"."""
  arg = common.parse_arg(arg, attention="softmax", variant="lra", smoke=False)
  attention_kwargs, attention_dropout, value_conv_size = common.lra_attention(
      arg.attention)
  if arg.variant not in VARIANTS:
    raise ValueError(f"config arg variant={arg.variant!r} is not one of "
                     f"{sorted(VARIANTS)}")
  builder_config, max_length, steps, warmup, eval_every, lr = VARIANTS[
      arg.variant]
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = steps
  c.batch_size = 32
  c.eval_batch_size = 64
  c.log_every = 50
  c.eval_every = eval_every       # 0 disables evaluation during training.
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.eval_splits = ("validation",)           # During training.
  # The harness reports test accuracy at the best validation accuracy
  # (run_tasks.py saves the model when dev accuracy strictly improves).
  c.select_best = "max:validation/accuracy"
  c.final_eval_splits = ("validation", "test")
  c.init_from = config_dict.placeholder(str)  # Weights only; see README.
  c.mesh = (("data", -1), ("fsdp", 1), ("model", 1))
  c.compute_dtype = "float32"     # "bfloat16": bf16 compute, fp32 params.
  c.ema_decay = 0.0               # > 0 keeps an EMA of params for eval.
  c.progress = True               # tqdm progress line.

  c.data = dict(
      name="listops",
      builder_config=builder_config,
      data_dir=config_dict.placeholder(str),  # None: $TFDS_DATA_DIR/default.
      prepare=True,               # Build the data on first use.
      max_length=max_length,
  )
  c.model = dict(
      name="encoder_classifier",
      vocab_size=16,
      num_classes=10,
      max_length=max_length,
      width=64,
      depth=2,
      num_heads=2,
      head_dim=32,
      mlp_dim=128,
      head_hidden_dim=128,
      dropout=0.1,
      attention_dropout=attention_dropout,  # On attention probabilities.
      attention=arg.attention,
      attention_kwargs=attention_kwargs,
      value_conv_size=value_conv_size,
      pooling="mean",           # "mean_padded": the original's (see encoder).
      # "hash": dropout masks ≈ 8× cheaper on CPU (attention/dropout.py).
      dropout_generator="threefry",
  )
  c.optimizer = dict(
      name="adamw", lr=lr, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0,
      schedule="onecycle", warmup_steps=warmup, end_lr_factor=0.0,
      grad_clip=0.0, no_decay=(r".*bias", r".*scale", r".*embed.*"))

  if arg.smoke:
    common.shrink_for_smoke(c)
    c.data.max_length = c.model.max_length = 128
  return c
