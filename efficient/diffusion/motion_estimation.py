"""Global motion between video frames: a fitted similarity transform.

The camera motion a video realises is estimated as one similarity transform
(scale s, rotation φ, shift (du, dv); `lightmotion.similarity`'s
parametrisation, centred coordinates) per pair of consecutive frames, such
that frame b at T·p matches frame a at p:

  1. two starts: no motion, and the integer shift of the phase correlation
     (Kuglin & Hines, 1975) of the two frames; the lower robust cost wins;
  2. Gauss–Newton on Σ_p ρ(b(T p) − a(p)) over (log s, φ, du, dv), with
     bilinear sampling of b, only over the p whose T p falls inside b, both
     frames blurred by σ = 1 px to widen the basin (Lucas–Kanade's
     forward-additive form; 30 damped iterations). ρ is Cauchy's robust loss,
     by iteratively reweighted least squares (scale 2.385 × 1.4826 × the
     residuals' median absolute value), so a moving object, whose pixels
     disagree with the camera's motion, does not pull the fit.

Accuracy on this repo's data (the `fmnist_video/moving` test split, whose
camera moves are known) is measured by experiments/lightmotion.py and
written in experiments/lightmotion/README.md; tests/diffusion/
test_motion_estimation.py checks known warps of smooth random images.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from efficient.diffusion import lightmotion


def _blur(image, sigma=1.0):
  radius = int(3 * sigma)
  taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / sigma)**2)
  taps = taps / taps.sum()
  padded = jnp.pad(image, radius, mode="edge")
  rows = jax.vmap(lambda r: jnp.convolve(r, taps, mode="valid"))(padded)
  return jax.vmap(lambda c: jnp.convolve(c, taps, mode="valid"),
                  in_axes=1, out_axes=1)(rows)


def phase_correlation(a, b):
  """Integer (du, dv) by which b's content is shifted from a's."""
  fa, fb = jnp.fft.fft2(a - a.mean()), jnp.fft.fft2(b - b.mean())
  cross = fb * jnp.conj(fa)
  surface = jnp.real(jnp.fft.ifft2(cross / (jnp.abs(cross) + 1e-9)))
  height, width = a.shape
  peak = jnp.argmax(surface)
  dv, du = peak // width, peak % width
  dv = jnp.where(dv > height // 2, dv - height, dv)
  du = jnp.where(du > width // 2, du - width, du)
  return jnp.stack([du, dv]).astype(jnp.float32)


def _matrix(params):
  log_scale, angle, du, dv = params
  s = jnp.exp(log_scale)
  c, n = jnp.cos(angle), jnp.sin(angle)
  return jnp.array([[s * c, s * n, du], [-s * n, s * c, dv]])


def fit_similarity(a, b, iterations=30, blur=1.0, exclude=None):
  """(log s, φ radians, du, dv) of the content motion from frame a to b.

  a, b: [H, W] float arrays; `exclude` [H, W] bool: pixels of a left out
  of the fit (e.g. the foreground). jit/vmap-able.
  """
  height, width = a.shape
  keep = jnp.ones((height, width), bool) if exclude is None else ~exclude
  if blur:
    a, b = _blur(a, blur), _blur(b, blur)
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32),
                            indexing="ij")
  cu, cv = (width - 1) / 2, (height - 1) / 2
  points = jnp.stack([cols - cu, rows - cv, jnp.ones_like(rows)], -1)

  def residual(params):
    warped = points @ _matrix(params).T  # [H, W, 2] in b (centred).
    u, v = warped[..., 0] + cu, warped[..., 1] + cv
    inside = ((u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1) &
              keep)
    sampled = jax.scipy.ndimage.map_coordinates(b, [v, u], order=1,
                                                mode="nearest")
    return jnp.where(inside, sampled - a, 0.0).reshape(-1)

  def step(i, params):
    r = residual(params)
    jac = jax.jacfwd(residual)(params)
    del i
    # Cauchy weights (IRLS): a moving object is an outlier to the camera's
    # motion, not part of it.
    scale = 2.385 * 1.4826 * jnp.median(jnp.abs(r)) + 1e-6
    weight = 1.0 / (1.0 + (r / scale)**2)
    normal = jac.T @ (weight[:, None] * jac)
    normal = normal + 1e-3 * jnp.diag(jnp.diag(normal)) + 1e-9 * jnp.eye(4)
    return params - jnp.linalg.solve(normal, jac.T @ (weight * r))

  def robust_cost(params):
    r = residual(params)
    scale = 2.385 * 1.4826 * jnp.median(jnp.abs(r)) + 1e-6
    return jnp.mean(jnp.log1p((r / scale)**2)) * scale**2

  # Two starts, the identity and phase correlation's shift; the better fit
  # wins (an object's shift can win the correlation peak).
  shift = phase_correlation(a, b)
  starts = jnp.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, shift[0], shift[1]]])
  fits = jax.vmap(lambda p: jax.lax.fori_loop(0, iterations, step, p))(starts)
  return fits[jnp.argmin(jax.vmap(robust_cost)(fits))]


@functools.partial(jax.jit, static_argnames="background_only")
def consecutive_motions(video, background_only=True):
  """[F − 1, 4] fitted (log s, φ, du, dv) between frames f and f + 1 of
  `video` [F, H, W] (or [F, H, W, 1]).

  With `background_only`, the pixels of `lightmotion.foreground_mask` (the
  object, found in each frame on its own) are left out of each fit: the
  camera's motion is the background's.
  """
  if video.ndim == 3:
    video = video[..., None]
  exclude = (jax.vmap(lambda f: lightmotion.foreground_mask(f[None])[0])(
      video[:-1]) if background_only else None)
  return jax.vmap(fit_similarity, in_axes=(0, 0, None, None, 0))(
      video[:-1, ..., 0], video[1:, ..., 0], 30, 1.0, exclude)


def requested_steps(path):
  """[F − 1, 4] (log s, φ radians, du, dv) of the path's frame-to-frame
  moves M_{f+1} M_f⁻¹ (`lightmotion.camera_path`)."""
  out = []
  for f in range(path.shape[0] - 1):
    scale, angle, (du, dv) = lightmotion.decompose(
        path[f + 1] @ np.linalg.inv(path[f]))
    out.append([np.log(scale), np.radians(angle), du, dv])
  return np.array(out)


def motion_errors(estimated, requested):
  """Per-step absolute errors: shift (px), scale (%), rotation (degrees).

  estimated, requested: [..., 4] as `consecutive_motions` returns them.
  Returns a dict of arrays of the leading shape.
  """
  estimated, requested = np.asarray(estimated), np.asarray(requested)
  return {
      "shift_px": np.linalg.norm(estimated[..., 2:] - requested[..., 2:],
                                 axis=-1),
      "scale_pct": 100 * np.abs(np.expm1(estimated[..., 0] -
                                         requested[..., 0])),
      "rotation_deg": np.degrees(np.abs(estimated[..., 1] -
                                        requested[..., 1])),
  }
