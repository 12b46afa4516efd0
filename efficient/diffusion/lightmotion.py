r"""LightMotion: training-free camera motion for video diffusion latents.

Song, Lin, Zeng, Zhang, Cao & Ji, "LightMotion: A Light and Tuning-free
Method for Simulating Camera Motion in Video Generation" (arXiv 2503.06508).
The authors released no code; this is a reconstruction from the paper's
abstract, project page and figures (reference/diffusion.md §3). What the
paper confirms, and what is ours:

  confirmed  the pipeline Z_T → Z_{T0} (plain sampling) → *update* at T0:
             latent permutation (simulates the camera) + latent resampling
             (fills the newly exposed views) → Z'_{T0} → plain sampling to
             Z'_{T1} → *correction*: re-noise Z'_{T1} to Z*_{T2}, T2 > T1,
             "to mitigate the SNR shift" → plain sampling to the video;
             pan (x, y), zoom (z) and rotation (θ) as the basic motions,
             combinable; resampling draws new regions from the *background*
             given a foreground mask, and a fill made for frame i moves with
             the camera into frames i+1, ... (cross-frame alignment).
  ours       (each a knob here, marked "reconstructed" below)
             * the motion's units: a camera move over the whole clip, growing
               linearly with the frame index (x, y in frame widths/heights,
               z the relative zoom at the last frame, θ in degrees);
             * the permutation is a nearest-neighbour gather under the
               inverse transform, from the frame's own latent (no
               interpolation, so every token keeps its noise statistics);
             * resampled tokens are frame-*positions*: a canvas cell first
               seen in frame i is filled with a background position of frame
               i, and every later frame gathers that same position from its
               own latent (so fills keep the frames' temporal dynamics);
             * the foreground mask: Otsu's threshold on the distance of the
               model's x̂₀ at T0 from each frame's median, dilated by one
               token (the paper does not say; a text-to-video model would
               more likely threshold a subject token's cross-attention);
             * the correction's form: forward diffusion T1 → T2 of Z'_{T1}
               ("forward") or SDEdit from the model's x̂₀ at T1 ("sdedit");
             * T0, T1, T2 (defaults 600, 400, 500 of 1000 steps), snapped to
               the sampler's grid. With DDPM's linear betas sqrt(ᾱ) is 0.04
               at step 800 (the latent is noise: a permutation there moves
               almost no content), 0.16 at 600 and 0.44 at 400.

Conventions: latents are `[frames, height, width, channels]` (a batch axis
in front for `sample`); coordinates are (column u, row v) about the frame
centre, rows pointing down. A camera path is one 3×3 homogeneous matrix per
frame mapping frame-0 positions to frame-f positions of the scene content;
paths compose by matrix products (`compose`) and invert frame by frame
(`inverse`).

A "latent" here is whatever the model denoises: our small video model works
in pixel space (experiments/lightmotion), so tokens are pixels.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from efficient.diffusion import samplers

FILLS = ("background", "any", "edge", "noise")
CORRECTIONS = ("forward", "sdedit", "none")


@dataclasses.dataclass(frozen=True)
class Motion:
  """A camera move over the whole clip (reconstructed units, see above).

  x: the camera pans right by x frame widths (content moves left);
  y: the camera moves down by y frame heights (content moves up);
  z: the camera zooms in: content is scaled by 1 + z at the last frame;
  theta: the camera rolls θ degrees counter-clockwise (content turns
  clockwise on screen). Frame f of F has moved by the fraction f/(F − 1).
  """
  x: float = 0.0
  y: float = 0.0
  z: float = 0.0
  theta: float = 0.0

  def __post_init__(self):
    if self.z <= -1.0:
      raise ValueError(f"Motion zoom z={self.z}: must be > -1 (scale 1 + z)")


def similarity(scale=1.0, angle=0.0, shift=(0.0, 0.0)):
  """3×3 matrix: scale, then turn by `angle` radians counter-clockwise *on
  screen* (rows point down), then shift (du, dv), in centred (u, v)."""
  c, s = math.cos(angle), math.sin(angle)
  return np.array([[scale * c, scale * s, shift[0]],
                   [-scale * s, scale * c, shift[1]],
                   [0.0, 0.0, 1.0]])


def camera_path(motion, num_frames, height, width):
  """[F, 3, 3] float64: frame-0 → frame-f positions of the scene content."""
  frac = np.arange(num_frames) / max(num_frames - 1, 1)
  return np.stack([
      similarity(1.0 + a * motion.z, -math.radians(a * motion.theta),
                 (-a * motion.x * width, -a * motion.y * height))
      for a in frac])


def compose(first, then):
  """The path that moves by `first`, then by `then` (frame by frame)."""
  return np.einsum("fij,fjk->fik", then, first)


def inverse(path):
  return np.linalg.inv(path)


def decompose(matrix):
  """(scale, angle in degrees counter-clockwise on screen, (du, dv)) of a
  similarity matrix (the inverse of `similarity`)."""
  scale = math.hypot(matrix[0, 0], matrix[1, 0])
  angle = math.degrees(math.atan2(matrix[0, 1], matrix[0, 0]))
  return scale, angle, (float(matrix[0, 2]), float(matrix[1, 2]))


@dataclasses.dataclass(frozen=True)
class Plan:
  """Where every token of the moved clip comes from (static numpy arrays).

  source: [F, H, W] int32 — below H·W a position (row-major) of the same
    frame in the un-moved latent; H·W + k the k-th *canvas cell*, a scene
    position outside the frame, exposed by the motion.
  first_seen: [cells] int32 — the first frame that shows each cell.
  edge: [F, H, W] int32 — the nearest in-frame position (the "edge" fill).
  """
  source: np.ndarray
  first_seen: np.ndarray
  edge: np.ndarray

  @property
  def num_cells(self):
    return self.first_seen.shape[0]

  def pad(self, num_cells):
    """The same plan with `first_seen` padded to `num_cells` entries, so
    plans of different motions share one shape (one compilation)."""
    extra = num_cells - self.num_cells
    if extra < 0:
      raise ValueError(f"plan has {self.num_cells} cells > {num_cells}")
    return dataclasses.replace(self, first_seen=np.concatenate(
        [self.first_seen, np.zeros(extra, np.int32)]))

  @property
  def exposed(self):
    """[F, H, W] bool: the newly exposed positions of each frame."""
    frames, height, width = self.source.shape
    return self.source >= height * width


jax.tree_util.register_dataclass(
    Plan, data_fields=["source", "first_seen", "edge"], meta_fields=[])


def plan(path, height, width, align=True):
  """The permutation of `path` by nearest-neighbour gather.

  Token (u, v) of frame f reads the scene position round(M_f⁻¹ (u, v)).
  With `align` (cross-frame alignment), all frames showing one outside
  scene position share its canvas cell; without it every exposed token of
  every frame is a cell of its own (filled independently).
  """
  frames = path.shape[0]
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  centre = np.array([(width - 1) / 2, (height - 1) / 2])
  points = np.stack([cols - centre[0], rows - centre[1],
                     np.ones_like(rows, np.float64)], axis=-1)  # [H, W, 3]
  scene = np.einsum("fij,hwj->fhwi", np.linalg.inv(path), points)
  # floor(x + 1/2), not rint: ties must round the same way at every
  # position, or a half-pixel pan would duplicate every other column.
  src_u = np.floor(scene[..., 0] + centre[0] + 0.5 + 1e-9).astype(np.int64)
  src_v = np.floor(scene[..., 1] + centre[1] + 0.5 + 1e-9).astype(np.int64)
  inside = (src_u >= 0) & (src_u < width) & (src_v >= 0) & (src_v < height)
  source = np.where(inside, src_v * width + src_u, -1)
  edge = (np.clip(src_v, 0, height - 1) * width +
          np.clip(src_u, 0, width - 1)).astype(np.int32)
  frame_of = np.broadcast_to(np.arange(frames)[:, None, None], source.shape)
  if align:
    keys = np.stack([src_u[~inside], src_v[~inside]], axis=-1)
  else:
    keys = np.stack([frame_of[~inside], np.flatnonzero(~inside)], axis=-1)
  if len(keys):
    cells, cell_of = np.unique(keys, axis=0, return_inverse=True)
    cell_of = cell_of.reshape(-1)
    first_seen = np.full(len(cells), frames, np.int64)
    np.minimum.at(first_seen, cell_of, frame_of[~inside])
  else:
    cell_of, first_seen = np.zeros(0, np.int64), np.zeros(0, np.int64)
  source[~inside] = height * width + cell_of
  return Plan(source.astype(np.int32), first_seen.astype(np.int32), edge)


def _otsu_threshold(values):
  """Otsu's threshold of a 1-D array: maximises the between-class variance."""
  v = jnp.sort(values)
  n = v.shape[0]
  count = jnp.arange(1, n, dtype=v.dtype)
  low_sum = jnp.cumsum(v)[:-1]
  low_mean = low_sum / count
  high_mean = (v.sum() - low_sum) / (n - count)
  between = count * (n - count) * (low_mean - high_mean)**2
  k = jnp.argmax(between)
  return (v[k] + v[k + 1]) / 2


def foreground_mask(x0, dilate=1):
  """[F, H, W] bool from the model's x̂₀ `[F, H, W, C]` (reconstructed).

  A token is foreground when its distance from its frame's median token
  exceeds Otsu's threshold over the clip, then the mask is dilated by
  `dilate` tokens so object edges are never copied as background.
  """
  median = jnp.median(x0, axis=(1, 2), keepdims=True)
  distance = jnp.sqrt(jnp.sum((x0 - median)**2, axis=-1))
  mask = distance > _otsu_threshold(distance.reshape(-1))
  if dilate:
    size = 2 * dilate + 1
    mask = jax.lax.reduce_window(mask, False, jnp.logical_or,
                                 (1, size, size), (1, 1, 1), "SAME")
  return mask


def fill_sources(the_plan, rng, foreground=None):
  """[cells] int32: each canvas cell's source position in its first frame,
  drawn uniformly from that frame's background (`foreground` [F, H, W]
  False; all positions if a frame has no background), or from all
  positions when `foreground` is None. Cell c's draw depends on (rng, c)
  only, so padding a plan changes nothing."""
  frames, height, width = the_plan.source.shape
  if foreground is None:
    foreground = jnp.zeros((frames, height, width), bool)
  allowed = ~foreground.reshape(frames, height * width)
  allowed = jnp.where(allowed.any(axis=1, keepdims=True), allowed, True)
  rank = jnp.cumsum(allowed, axis=1)  # [F, H·W]

  def draw(cell, frame):
    pick = jax.random.randint(jax.random.fold_in(rng, cell), (), 0,
                              rank[frame, -1])
    return jnp.searchsorted(rank[frame], pick + 1, side="left")

  cells = jnp.arange(the_plan.num_cells)
  return jax.vmap(draw)(cells, jnp.asarray(the_plan.first_seen)).astype(
      jnp.int32)


def update(latent, the_plan, rng, *, fill="background", foreground=None,
           noise_scale=1.0):
  """LightMotion's update at T0: permutation + resampling of `latent`.

  fill: "background" (the paper: background positions, given `foreground`),
  "any" (positions drawn from the whole frame), "edge" (the nearest
  in-frame token: what a plain warp with clamping does) or "noise" (fresh
  N(0, noise_scale²) tokens: no resampling). Returns the moved latent.
  """
  if fill not in FILLS:
    raise ValueError(f"fill={fill!r}: one of {FILLS}")
  if fill == "background" and foreground is None:
    raise ValueError("fill='background' needs the foreground mask")
  frames, height, width, channels = latent.shape
  if the_plan.source.shape != (frames, height, width):
    raise ValueError(f"plan for {the_plan.source.shape}, latent "
                     f"{latent.shape}")
  tokens = latent.reshape(frames, height * width, channels)
  source = jnp.asarray(the_plan.source).reshape(frames, -1)
  exposed = source >= height * width
  if fill == "edge":
    index = jnp.asarray(the_plan.edge).reshape(frames, -1)
  elif fill == "noise" or the_plan.num_cells == 0:  # (static shape)
    index = jnp.where(exposed, 0, source)
  else:
    cells = fill_sources(the_plan, rng,
                         foreground if fill == "background" else None)
    index = jnp.where(exposed, cells[jnp.maximum(source - height * width, 0)],
                      source)
  moved = jnp.take_along_axis(tokens, index[..., None], axis=1)
  if fill == "noise":
    fresh = noise_scale * jax.random.normal(rng, moved.shape, moved.dtype)
    moved = jnp.where(exposed[..., None], fresh, moved)
  return moved.reshape(latent.shape)


def renoise(x, schedule, step_from, step_to, rng):
  """Forward diffusion from step_from to step_to > step_from with fresh noise:
  x_{T2} = sqrt(ᾱ_{T2}/ᾱ_{T1}) x_{T1} + sqrt(1 − ᾱ_{T2}/ᾱ_{T1}) ε."""
  ratio = schedule.alphas_cumprod[step_to] / schedule.alphas_cumprod[step_from]
  return (jnp.sqrt(ratio) * x +
          jnp.sqrt(1 - ratio) * jax.random.normal(rng, x.shape, x.dtype))


def predicted_x0(eps_fn, schedule, x, step, labels):
  """x̂₀ = (x − sqrt(1 − ᾱ) ε̂) / sqrt(ᾱ) at integer `step`."""
  alpha, sigma = schedule.alpha_sigma(step)
  eps = eps_fn(x, jnp.full(x.shape[:1], step, jnp.int32), labels)
  return (x - sigma * eps) / alpha


def update_batch(eps_fn, schedule, x, step, labels, motion_plan, rng,
                 fill="background"):
  """The update at T0 = `step` of a batch `x` [B, F, H, W, C]: the
  foreground mask from x̂₀ (for `fill="background"`), then `update` per
  video (fresh noise at the step's noise level where a fill needs it)."""
  foreground = None
  if fill == "background":
    x0 = predicted_x0(eps_fn, schedule, x, step, labels)
    foreground = jax.vmap(foreground_mask)(x0)
  sigma = jnp.sqrt(1 - schedule.alphas_cumprod[step])
  keys = jax.random.split(rng, x.shape[0])
  return jax.vmap(lambda z, key, fg: update(
      z, motion_plan, key, fill=fill, foreground=fg, noise_scale=sigma),
      in_axes=(0, 0, 0 if foreground is not None else None))(
          x, keys, foreground)


def snap(grid, step):
  """Index of the grid point nearest to `step`."""
  return int(np.argmin(np.abs(np.asarray(grid) - step)))


def sample(eps_fn, schedule, noise, labels, motion_plan, rng, *,
           sampler="ddim", num_steps=50, t0=600, t1=400, t2=500,
           fill="background", correction="forward"):
  """A video `[B, F, H, W, C]` from `noise`, moved by `motion_plan`.

  `motion_plan` = `plan(camera_path(motion, F, H, W), H, W, align)` (a
  pytree: it may be a jit argument), or None for plain (uncontrolled)
  sampling on the same grid. T → T0 plain sampling; `update` (the
  foreground mask from x̂₀ at T0); T0 → T1; correction (re-noise to T2,
  "forward" or "sdedit"; "none" skips it and samples T0 → 0 straight);
  T2 → 0. T0, T1, T2 snap to the grid of `num_steps` steps; each segment
  restarts the sampler.
  """
  if correction not in CORRECTIONS:
    raise ValueError(f"correction={correction!r}: one of {CORRECTIONS}")
  run = {"ddim": samplers.ddim_sample,
         "dpm_solver_pp": samplers.dpm_solver_pp_2m}.get(sampler)
  if run is None:
    raise ValueError(f"sampler={sampler!r}: 'ddim' or 'dpm_solver_pp'")
  grid = samplers.step_grid(schedule, num_steps)
  if motion_plan is None:
    return run(eps_fn, schedule, noise, labels=labels, grid=grid)
  i0, i1, i2 = snap(grid, t0), snap(grid, t1), snap(grid, t2)
  if not 0 < i0 < len(grid) - 1:
    raise ValueError(f"t0={t0} snaps to step {grid[i0]}: needs T > T0 > 0")
  if correction != "none" and not (i0 < i1 < len(grid) - 1 and i2 < i1):
    raise ValueError(f"t0, t1, t2 = {t0}, {t1}, {t2} snap to steps "
                     f"{grid[i0]}, {grid[i1]}, {grid[i2]}: needs "
                     "T0 > T1 > 0 and T2 > T1")
  update_rng, correct_rng = jax.random.split(rng)

  x = run(eps_fn, schedule, noise, labels=labels, grid=grid[:i0 + 1])
  x = update_batch(eps_fn, schedule, x, int(grid[i0]), labels, motion_plan,
                   update_rng, fill)
  if correction == "none":
    return run(eps_fn, schedule, x, labels=labels, grid=grid[i0:])
  x = run(eps_fn, schedule, x, labels=labels, grid=grid[i0:i1 + 1])
  step1, step2 = int(grid[i1]), int(grid[i2])
  if correction == "forward":
    x = renoise(x, schedule, step1, step2, correct_rng)
  else:
    x0 = predicted_x0(eps_fn, schedule, x, step1, labels)
    x = renoise(x0, schedule, 0, step2, correct_rng)
  return run(eps_fn, schedule, x, labels=labels, grid=grid[i2:])
