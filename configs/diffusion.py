r"""Class-conditional diffusion: DiT (adaLN-Zero or TD-LN) and DiMR; the arg
picks the model.

  python -m experiments.train --config=configs/diffusion.py:fmnist_dit \
      --workdir=runs/diffusion_fmnist_dit
  python -m experiments.train --config=configs/diffusion.py:fmnist_dimr,smoke \
      --workdir=/tmp/diffusion_smoke
  python scripts/count_params.py --config=configs/diffusion.py:dimr_xl2r

Variants (arg = "<model>[,smoke][,seed=N][,budget=TMACs]"):
  * the published ImageNet-256 latent models (32×32×4, 1000 classes):
    `dit_xl2` (675M, 118.6 GMACs), `dit_b2`, `dit_s2`, `dimr_xl2r` (505M,
    160 GMACs), `dimr_g2r` (1.06B, 331 GMACs), with each paper's optimizer.
    No ImageNet latents exist offline: these are for `count_params.py` (and
    for users with data); training them here stops with a config error.
  * Fashion-MNIST 32×32×1 (28×28 padded), 10 classes, sized for a 2-core
    CPU — this repo's choice, not a paper's. Pixel space at patch 4 gives
    the 8×8 = 64 tokens of a /2 model on 16×16 latents:
      `fmnist_dit`        DiT/4, d192, depth 8, adaLN-Zero   (0.241 GMACs)
      `fmnist_dit_tdln`   the same with TD-LN + class token  (0.243)
      `fmnist_dimr`       DiMR/4R: Transformer d192 × 7 on 8×8 tokens +
                          ConvNeXt d32 × 3 at 32×32, TD-LN    (0.270)
      `fmnist_dimr_adaln` the same with adaLN-Zero           (0.271)
  * Fashion-MNIST 16×16×1 (2×2-averaged to 14×14, padded), the reduced
    experiment that fits this CPU (reference/diffusion.md §4.2's size):
    ≈ 1.0 s per step instead of 2.4-3.5, so 2.5× the steps at ~85% of the
    compute. Patch 2 on 16×16 gives the same 8×8 tokens:
      `fmnist16_dit`        DiT/2, d128, depth 6, heads 4, adaLN-Zero (0.0825)
      `fmnist16_dit_tdln`   the same with TD-LN + class token       (0.0832)
      `fmnist16_dimr`       DiMR/2R: Transformer d128 × 5 on 8×8 tokens +
                            ConvNeXt d32 × 2 at 16×16, TD-LN        (0.0758)
      `fmnist16_dimr_adaln` the same with adaLN-Zero                (0.0756)
    They share one optimizer so only the architecture differs: AdamW 2e-4,
    betas (0.9, 0.99), weight decay 0.03 (not the TD-LN gates, biases or
    embeddings), 500 warm-up steps then constant, batch 64 —
    reference/diffusion.md §4.2's settings for short runs (DiMR's own
    (0.99, 0.99) and 5k warm-up are tuned for 1M steps) — and EMA 0.995:
    after ~1,800 steps the initial weights keep a share 0.995^1787 ≈ 1e-4
    of the EMA (0.999 would leave 17% of them, zeros for adaLN-Zero's
    modulations, which would bias the comparison). Training compute is
    matched: `total_steps = budget / (3 × forward MACs × batch)`, budget
    92.7 TMACs by default at 32×32 (2,000 fmnist_dit steps), 79.2 at
    16×16 (5,000 fmnist16_dit steps).

Diffusion settings: ε-prediction, 1000 DDPM steps, linear betas for DiT and
Stable Diffusion's scaled-linear for DiMR (each paper's), label dropout 0.1
to the null class (index num_classes). The run ends with FID / KID / class
accuracy of 10,000 DPM-Solver++(2M) samples (20 steps, guidance 1.5 on
every channel) against the 10,000 test images (`config.sample`).
"""
import ml_collections
from ml_collections import config_dict

from configs import common
from efficient.diffusion import tdln

DIT = {  # variant: (depth, hidden, heads, patch), input, channels, classes
    "dit_xl2": ((28, 1152, 16, 2), 32, 4, 1000),
    "dit_b2": ((12, 768, 12, 2), 32, 4, 1000),
    "dit_s2": ((12, 384, 6, 2), 32, 4, 1000),
    "fmnist_dit": ((8, 192, 3, 4), 32, 1, 10),
    "fmnist_dit_tdln": ((8, 192, 3, 4), 32, 1, 10),
    "fmnist16_dit": ((6, 128, 4, 2), 16, 1, 10),
    "fmnist16_dit_tdln": ((6, 128, 4, 2), 16, 1, 10),
}
FMNIST_DIMR_STAGES = (("transformer", 192, 384, 3, 7, 4),
                      ("convnext", 32, 64, 2, 2, 1))
FMNIST16_DIMR_STAGES = (("transformer", 128, 256, 4, 5, 2),
                        ("convnext", 32, 64, 2, 2, 1))
DIMR = {  # variant: stages, input, channels, classes
    "dimr_xl2r": ((("transformer", 960, 1920, 16, 39, 2),
                   ("convnext", 480, 960, 16, 20, 1)), 32, 4, 1000),
    "dimr_g2r": ((("transformer", 1152, 2304, 16, 57, 2),
                  ("convnext", 576, 1152, 16, 29, 1)), 32, 4, 1000),
    "fmnist_dimr": (FMNIST_DIMR_STAGES, 32, 1, 10),
    "fmnist_dimr_adaln": (FMNIST_DIMR_STAGES, 32, 1, 10),
    "fmnist16_dimr": (FMNIST16_DIMR_STAGES, 16, 1, 10),
    "fmnist16_dimr_adaln": (FMNIST16_DIMR_STAGES, 16, 1, 10),
}
SMOKE_DIT = (2, 32, 2, 4)
SMOKE_DIMR = (("transformer", 32, 64, 2, 3, 4), ("convnext", 16, 32, 2, 1, 1))
# Training compute per input size, in TMACs: 3 (forward + backward) × the
# DiT's forward MACs × 64 images × its steps.
DEFAULT_BUDGET_TMACS = {32: 92.7,   # 0.2413 GMACs × 2,000 steps
                        16: 79.2}   # 0.0825 GMACs × 5,000 steps


def _model(variant, smoke):
  if variant in DIT:
    (depth, hidden, heads, patch), size, channels, classes = DIT[variant]
    if smoke:
      depth, hidden, heads, patch = SMOKE_DIT
    return dict(name="dit", input_size=size, in_channels=channels,
                patch_size=patch, depth=depth, hidden=hidden, heads=heads,
                num_classes=classes, learn_sigma=variant == "dit_xl2",
                norm="tdln" if variant.endswith("tdln") else "adaln_zero")
  if variant in DIMR:
    stages, size, channels, classes = DIMR[variant]
    return dict(name="dimr", stages=SMOKE_DIMR if smoke else stages,
                input_size=size, in_channels=channels, num_classes=classes,
                norm="adaln_zero" if variant.endswith("adaln") else "tdln")
  raise ValueError(f"config arg model={variant!r}: one of "
                   f"{sorted(DIT) + sorted(DIMR)}")


def _paper_optimizer(c, variant):
  if variant.startswith("dit"):  # DiT: AdamW 1e-4, no weight decay.
    c.optimizer = dict(name="adamw", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8,
                       weight_decay=0.0, schedule="constant", warmup_steps=0,
                       end_lr_factor=1.0, grad_clip=0.0,
                       no_decay=(r".*bias", tdln.NO_DECAY))
    c.ema_decay = 0.9999
  else:  # DiMR: AdamW 2e-4, wd 0.03 but the gates, (0.99, 0.99), warm-up.
    c.optimizer = dict(name="adamw", lr=2e-4, b1=0.99, b2=0.99, eps=1e-8,
                       weight_decay=0.03, schedule="constant",
                       warmup_steps=5000, end_lr_factor=1.0, grad_clip=0.0,
                       no_decay=(tdln.NO_DECAY,))
    c.ema_decay = 0.9999


def get_config(arg=None):
  """arg = "<variant>[,smoke][,seed=N][,budget=TMACs]" (module docstring)."""
  arg = common.parse_arg(arg, model="fmnist_dit", smoke=False, seed=0,
                         budget=0.0)
  c = ml_collections.ConfigDict()
  c.task = "diffusion"
  c.seed = arg.seed
  c.model = _model(arg.model, arg.smoke)
  c.batch_size = 64
  fmnist = arg.model.startswith("fmnist")
  if fmnist:
    from efficient import models  # pylint: disable=g-import-not-at-top
    from efficient.diffusion import training  # pylint: disable=g-import-not-at-top
    kwargs = dict(c.model)
    macs = training.forward_macs(models.get_model(kwargs.pop("name"),
                                                  **kwargs))
    budget = arg.budget or DEFAULT_BUDGET_TMACS[c.model.input_size]
    c.total_steps = max(1, round(budget * 1e12 / (3 * macs * c.batch_size)))
    c.optimizer = dict(name="adamw", lr=2e-4, b1=0.9, b2=0.99, eps=1e-8,
                       weight_decay=0.03, schedule="constant",
                       warmup_steps=500, end_lr_factor=1.0, grad_clip=0.0,
                       no_decay=(r".*bias", r".*embed.*", r".*pos_embed",
                                 tdln.NO_DECAY))
    c.ema_decay = 0.995
  else:
    c.total_steps = 400_000
    _paper_optimizer(c, arg.model)
  c.eval_batch_size = 250
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.eval_splits = ("validation",)
  c.final_eval_splits = ("validation",)
  c.init_from = config_dict.placeholder(str)
  c.mesh = (("data", -1), ("fsdp", 1), ("model", 1))
  c.compute_dtype = "float32"
  c.progress = True
  c.data = dict(name="fashion_mnist", builder_config="full",
                data_dir=config_dict.placeholder(str), prepare=True,
                downsample=2 if c.model.input_size == 16 else 1)
  c.diffusion = dict(
      betas="linear" if c.model.name == "dit" else "scaled_linear",
      num_steps=1000, label_dropout=0.1,
      loss_weights=(0.25, 1.0) if c.model.name == "dimr" else (1.0,))
  c.sample = dict(sampler="dpm_solver_pp", num_steps=20, guidance=1.5,
                  guidance_power=0.0, num_samples=10_000, batch_size=500,
                  seed=0, classifier_steps=1500)
  if arg.smoke:
    common.shrink_for_smoke(c)
    c.sample.update(num_samples=16, batch_size=8, num_steps=2,
                    classifier_steps=5)
  return c
