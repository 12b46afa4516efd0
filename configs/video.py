r"""A small class-conditional video diffusion model (the static-camera test bed
of LightMotion) and the LightMotion evaluation settings.

  python -m experiments.train --config=configs/video.py:static \
      --workdir=runs/video_static
  python -m experiments.lightmotion --config=configs/video.py:static \
      --workdir=runs/video_static
  python -m experiments.train --config=configs/video.py:static,smoke \
      --workdir=/tmp/video_smoke

Variants (arg = "<data>[,smoke][,seed=N][,steps=N][,prediction=v|epsilon]
[,size=32|16]"):
  * `static` — trained on `fmnist_video/static` (efficient/data/fmnist_video:
    8 frames of 32×32×1, a Fashion-MNIST object moving over a textured
    background, the camera still), so any camera motion in its samples comes
    from LightMotion;
  * `moving` — the same model trained on `fmnist_video/moving` (random
    camera moves), for comparison;
  * `static_bold`, `moving_bold` — the same on the bold-background builder
    configs (a background the denoiser fixes early; see
    experiments/lightmotion/README.md).

Model (ours, sized for a 2-core CPU): `VideoDiT`, patch 4 (8×8 tokens per
frame), width 96, depth 4, 4 heads, factorised space–time attention,
adaLN-Zero: 0.99M parameters, 0.33 GMACs per 8-frame video, 2.5 s per
training step of 32 videos on the 2-core CPU (width 128 × depth 6 would
take 5.7 s). DDPM with 1000 linear betas, v-prediction (below), label
dropout 0.1.
AdamW 2e-4, betas (0.9, 0.99), weight decay 0.03 (not biases, embeddings),
500 warm-up steps, 3,000 steps of 32 videos, EMA 0.995 (configs/
diffusion.py's fmnist settings).

Why v-prediction (Salimans & Ho, 2022) and not ε: an ε-prediction model of
this size trained for 3,000 steps (runs/video_static, validation ε-MSE
0.033) sampled 4×4-patch noise with no object. Its x̂₀ from a noised
validation video, x̂₀ = (x_n − sqrt(1 − ᾱ) ε̂) / sqrt(ᾱ), had MSE 0.107 at
n = 600, 0.48 at 800 and 5.9 at 950, worse than predicting the mean
video: ε̂'s small absolute errors (6e-4 at n = 950) are multiplied by
sqrt((1 − ᾱ)/ᾱ) ≈ 96 there, which is where a sampler decides the layout.
With v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x₀ the network predicts ≈ −x₀ at high
noise, with no amplification; the samplers take ε = sqrt(ᾱ) v + sqrt(1 − ᾱ)
x_n (`DiffusionTask.epsilon`), so LightMotion is unchanged.
`prediction=epsilon` gives the earlier model.

`size=16`: the same videos with every frame averaged over 2×2 pixel blocks
(`pipeline.VideoToFloat(downsample=2)`) and a patch-2 model, so the token
grid (8×8 per frame) and the compute stay those of the 32×32 patch-4 model
while each token predicts 4 pixels instead of 16 (the fmnist16 variants of
configs/diffusion.py do the same for images). Motions are the same
fractions of the frame.

`config.lightmotion` (read by experiments/lightmotion.py): the camera moves
to request (`Motion` units: pan x, y in frame sizes over the clip, zoom z,
roll θ in degrees), the schedule T0 → T1 → T2, the fill, alignment and
correction form, the sampler, and the number of videos per motion.
"""
import ml_collections
from ml_collections import config_dict

from configs import common

# name: (x, y, z, theta) — pans of a quarter frame (1 px per frame step
# over 8 frames), zooms by ±25%, rolls of ±20°, one combination.
DATA = ("static", "moving", "static_bold", "moving_bold")  # fmnist_video's
MOTIONS = {
    "pan_right": (0.25, 0.0, 0.0, 0.0),
    "pan_left": (-0.25, 0.0, 0.0, 0.0),
    "pan_down": (0.0, 0.25, 0.0, 0.0),
    "pan_up": (0.0, -0.25, 0.0, 0.0),
    "zoom_in": (0.0, 0.0, 0.25, 0.0),
    "zoom_out": (0.0, 0.0, -0.2, 0.0),
    "roll_ccw": (0.0, 0.0, 0.0, 20.0),
    "roll_cw": (0.0, 0.0, 0.0, -20.0),
    "pan_zoom_roll": (0.125, -0.125, 0.15, 10.0),
}


def get_config(arg=None):
  """arg = "<data>[,smoke][,seed=N][,steps=N][,prediction=..][,size=..]"
  (module docstring)."""
  arg = common.parse_arg(arg, data="static", smoke=False, seed=0, steps=3000,
                         prediction="v", size=32)
  if arg.data not in DATA:
    raise ValueError(f"config arg data={arg.data!r}: one of {DATA}")
  if arg.size not in (32, 16):
    raise ValueError(f"config arg size={arg.size!r}: 32 or 16")
  c = ml_collections.ConfigDict()
  c.task = "diffusion"
  c.seed = arg.seed
  c.model = dict(name="video_dit", num_frames=8, input_size=arg.size,
                 in_channels=1, patch_size=arg.size // 8, depth=4, hidden=96,
                 heads=4, num_classes=10)
  c.batch_size = 32
  c.total_steps = arg.steps
  c.optimizer = dict(name="adamw", lr=2e-4, b1=0.9, b2=0.99, eps=1e-8,
                     weight_decay=0.03, schedule="constant", warmup_steps=500,
                     end_lr_factor=1.0, grad_clip=0.0,
                     no_decay=(r".*bias", r".*embed.*"))
  c.ema_decay = 0.995
  c.eval_batch_size = 100
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 250
  c.keep_checkpoints = 2
  c.eval_splits = ("validation",)
  c.final_eval_splits = ("validation",)
  c.init_from = config_dict.placeholder(str)
  c.mesh = (("data", -1), ("fsdp", 1), ("model", 1))
  c.compute_dtype = "float32"
  c.progress = True
  c.data = dict(name="fmnist_video", builder_config=arg.data,
                data_dir=config_dict.placeholder(str), prepare=True,
                downsample=32 // arg.size)
  c.diffusion = dict(betas="linear", num_steps=1000, label_dropout=0.1,
                     prediction=arg.prediction)
  # A strip of one uncontrolled video per class at the end of training.
  c.sample = dict(sampler="ddim", num_steps=50, guidance=1.5,
                  guidance_power=0.0, num_samples=10, batch_size=10, seed=0)
  c.lightmotion = dict(
      motions={k: list(v) for k, v in MOTIONS.items()},
      t0=600, t1=400, t2=500, fill="background", align=True,
      correction="forward", sampler="ddim", num_steps=50, guidance=1.5,
      num_videos=64, batch_size=32, seed=0, reference_split="test",
      reference_videos=500, classifier_steps=1500,
      ablations=("no_resampling", "no_mask", "no_correction",
                 "sdedit_correction", "early_update", "late_update"),
      # Motions that expose new regions (zooming in exposes none).
      ablation_motions=("pan_right", "zoom_out", "roll_ccw"))
  if arg.smoke:
    common.shrink_for_smoke(c)
    c.model.update(depth=1, hidden=32, heads=2)
    c.sample.update(num_samples=2, batch_size=2, num_steps=4)
    # 10 steps: every ablation's t0 > t1 (and t2) falls on a sampler step.
    c.lightmotion.update(num_videos=2, batch_size=2, num_steps=10,
                         reference_videos=4, classifier_steps=5)
  return c
