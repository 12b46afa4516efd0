r"""Draft models for speculative decoding of SmolLM2-135M (issue: draft
models; experiments/spec_decode/README.md).

  ar    the autoregressive draft: a 4-layer Llama, width 192, SmolLM2's
        tokenizer, its tied embedding started from the target's (PCA to 192
        dims), trained on the target's own continuations of prose prompts
        (`draft_text/prose_regen`: sequence-level distillation):

  python -m experiments.train --config=configs/draft.py:ar \
      --workdir=runs/draft_ar

  pard  PARD adaptation of that draft (K = 4 trained segments, COD 0.7 /
        0.2, mask token <empty_output>), starting from the AR run:

  python -m experiments.train --config=configs/draft.py:pard \
      --workdir=runs/draft_pard --config.init_from=runs/draft_ar

`smoke` uses a random byte-level tiny target and its regenerated data
(seconds; plumbing only):

  python -m experiments.train --config=configs/draft.py:ar,smoke \
      --workdir=/tmp/draft_smoke
"""
import ml_collections
from ml_collections import config_dict

from configs import common

DRAFT = dict(vocab_size=49152, dim=192, n_layers=4, n_heads=3, n_kv_heads=1,
             hidden_dim=512, rope_theta=1e5, tie_embeddings=True,
             init_std=0.02)
SMOKE_DRAFT = dict(vocab_size=264, dim=16, n_layers=1, n_heads=2,
                   n_kv_heads=1, hidden_dim=32, tie_embeddings=True,
                   init_std=0.3)
VARIANTS = ("ar", "pard")


def get_config(arg=None):
  """arg = "<ar|pard>[,smoke][,seed=N]"."""
  arg = common.parse_arg(arg, variant="ar", smoke=False, seed=0)
  if arg.variant not in VARIANTS:
    raise ValueError(f"config arg variant={arg.variant!r} is not one of "
                     f"{VARIANTS}")
  c = ml_collections.ConfigDict()
  c.task = "language_model" if arg.variant == "ar" else "pard"
  c.seed = arg.seed
  c.model = dict(name="llama", **(SMOKE_DRAFT if arg.smoke else DRAFT))
  c.draft = dict(target="tiny" if arg.smoke else "smollm2",
                 init_embedding="target_pca", num_segments=4,
                 cod_ratio=0.7, cod_ratio_min=0.2,
                 mask_id=257 if arg.smoke else 16)
  c.batch_size = 16
  if arg.variant == "ar":
    c.total_steps = 1500
    c.optimizer = dict(name="adamw", lr=1e-3, b1=0.9, b2=0.95, eps=1e-8,
                       weight_decay=0.1, schedule="cosine", warmup_steps=100,
                       end_lr_factor=0.1, grad_clip=1.0,
                       no_decay=(r".*scale", r".*embed.*"))
  else:  # PARD: constant LR as in PARD's configs, from the AR draft.
    c.total_steps = 600
    c.optimizer = dict(name="adamw", lr=3e-4, b1=0.9, b2=0.95, eps=1e-8,
                       weight_decay=0.0, schedule="constant",
                       warmup_steps=50, end_lr_factor=1.0, grad_clip=1.0,
                       no_decay=())
  c.eval_batch_size = 32
  c.log_every = 25
  c.eval_every = 250
  c.checkpoint_every = 250
  c.keep_checkpoints = 2
  c.eval_splits = ("validation",)
  c.final_eval_splits = ("validation",)
  c.init_from = config_dict.placeholder(str)
  c.mesh = (("data", -1), ("fsdp", 1), ("model", 1))
  c.compute_dtype = "float32"
  c.ema_decay = 0.0
  c.progress = True
  c.data = dict(name="draft_text", builder_config="prose_regen",
                data_dir=config_dict.placeholder(str), prepare=True,
                seq_len=128)
  if arg.smoke:
    common.shrink_for_smoke(c)
    c.data.builder_config = "smoke_regen"
    c.data.seq_len = 32
  return c
