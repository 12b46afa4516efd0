r"""Class-conditional diffusion: DiT (adaLN-Zero or TD-LN) and DiMR; the arg
picks the model.

  python scripts/count_params.py --config=configs/diffusion.py:dimr_xl2r

Variants (arg = "<model>[,smoke]"):
  * the published ImageNet-256 latent models (32×32×4, 1000 classes):
    `dit_xl2` (675M, 118.6 GMACs), `dit_b2`, `dit_s2`, `dimr_xl2r` (505M,
    160 GMACs), `dimr_g2r` (1.06B, 331 GMACs);
  * Fashion-MNIST at 32×32×1, 10 classes, sized for a CPU: `fmnist_dit`
    (DiT-S-like, adaLN-Zero), `fmnist_dit_tdln` (the same with TD-LN and a
    class token), `fmnist_dimr` (Transformer at 16×16 + ConvNeXt at 32×32).
    These sizes are this repo's choice, not a paper's.

The diffusion settings are the papers': ε-prediction, 1000 DDPM steps,
linear betas for DiT and Stable Diffusion's scaled-linear for DiMR, label
dropout 0.1 to the null class (index num_classes), EMA weights for sampling.
The training loop that consumes them (and the optimizer settings below, the
papers' own) lands with the rest of issue #5; today
`scripts/count_params.py` reads the model part.
"""
import ml_collections

from configs import common
from efficient.diffusion import tdln

DIT = {  # variant: (preset depth/hidden/heads/patch, input, channels, classes)
    "dit_xl2": ((28, 1152, 16, 2), 32, 4, 1000),
    "dit_b2": ((12, 768, 12, 2), 32, 4, 1000),
    "dit_s2": ((12, 384, 6, 2), 32, 4, 1000),
    "fmnist_dit": ((6, 192, 3, 2), 32, 1, 10),
    "fmnist_dit_tdln": ((6, 192, 3, 2), 32, 1, 10),
}
DIMR = {  # variant: (stages, input, channels, classes)
    "dimr_xl2r": ((("transformer", 960, 1920, 16, 39, 2),
                   ("convnext", 480, 960, 16, 20, 1)), 32, 4, 1000),
    "dimr_g2r": ((("transformer", 1152, 2304, 16, 57, 2),
                  ("convnext", 576, 1152, 16, 29, 1)), 32, 4, 1000),
    "fmnist_dimr": ((("transformer", 192, 384, 3, 7, 2),
                     ("convnext", 96, 192, 3, 4, 1)), 32, 1, 10),
}
SMOKE_DIT = (2, 32, 2, 2)
SMOKE_DIMR = (("transformer", 32, 64, 2, 3, 2), ("convnext", 16, 32, 2, 2, 1))


def get_config(arg=None):
  """arg = "<variant>[,smoke]" (see the module docstring)."""
  arg = common.parse_arg(arg, model="fmnist_dit", smoke=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 4 if arg.smoke else 100_000
  c.batch_size = 4 if arg.smoke else 64
  if arg.model in DIT:
    (depth, hidden, heads, patch), size, channels, classes = DIT[arg.model]
    if arg.smoke:
      depth, hidden, heads, patch = SMOKE_DIT
    c.model = dict(name="dit", input_size=size, in_channels=channels,
                   patch_size=patch, depth=depth, hidden=hidden, heads=heads,
                   num_classes=classes, learn_sigma=arg.model == "dit_xl2",
                   norm="tdln" if arg.model.endswith("tdln") else "adaln_zero")
    c.diffusion = dict(betas="linear", num_steps=1000)
    # DiT: AdamW 1e-4, no weight decay, constant lr.
    c.optimizer = dict(name="adamw", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8,
                       weight_decay=0.0, schedule="constant", warmup_steps=0,
                       end_lr_factor=1.0, grad_clip=0.0,
                       no_decay=(r".*bias", tdln.NO_DECAY))
  elif arg.model in DIMR:
    stages, size, channels, classes = DIMR[arg.model]
    c.model = dict(name="dimr", stages=SMOKE_DIMR if arg.smoke else stages,
                   input_size=size, in_channels=channels, num_classes=classes)
    c.diffusion = dict(betas="scaled_linear", num_steps=1000,
                       loss_weights=(0.25, 1.0))
    # DiMR: AdamW 2e-4, wd 0.03 except the TD-LN gates, betas (0.99, 0.99)
    # (tuned for 1M steps; reference/diffusion.md suggests (0.9, 0.99) for
    # short runs), linear warm-up then constant.
    c.optimizer = dict(name="adamw", lr=2e-4, b1=0.99, b2=0.99, eps=1e-8,
                       weight_decay=0.03, schedule="constant",
                       warmup_steps=5000, end_lr_factor=1.0, grad_clip=0.0,
                       no_decay=(tdln.NO_DECAY,))
  else:
    raise ValueError(f"config arg model={arg.model!r}: one of "
                     f"{sorted(DIT) + sorted(DIMR)}")
  c.diffusion.update(label_dropout=0.1, ema_decay=0.9999)
  return c
