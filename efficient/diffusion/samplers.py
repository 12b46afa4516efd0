"""Samplers for ε-prediction models: DDPM, DDIM, DPM-Solver++(2M), and
classifier-free guidance (constant, and DiMR's power-cosine ramp).

Every sampler takes `eps_fn(x, step, labels) -> ε̂` (step: int `[batch]`,
1..T), a `schedules.Schedule`, the starting noise x_T and a number of steps;
the grid runs from T down to 0 in equal strides (ᾱ_0 = 1, the data;
`step_grid`), and the whole loop is one `lax.scan`.

  * DDIM (Song et al., 2021, arXiv 2010.02502, Eq. 12):
    x_prev = sqrt(ᾱ_prev) x̂₀ + sqrt(1 − ᾱ_prev − σ²) ε̂ + σ z,
    σ = η sqrt((1 − ᾱ_prev)/(1 − ᾱ)) sqrt(1 − ᾱ/ᾱ_prev); η = 0 is
    deterministic (the probability-flow ODE's first-order solver).
  * DDPM ancestral sampling (Ho et al., 2020, Alg. 2) with σ² = β̃ is DDIM
    with η = 1 (DDIM Eq. 16); on a strided grid β = 1 − ᾱ/ᾱ_prev.
  * DPM-Solver++(2M) (Lu et al., 2022, arXiv 2211.01095, Alg. 2), data
    prediction x̂₀ = (x − σ ε̂)/α, λ = log(α/σ):
    x_{i} = (σ_i/σ_{i−1}) x_{i−1} − α_i (e^{−h_i} − 1) D_i,
    D_i = (1 + 1/(2r_i)) x̂₀_{i−1} − x̂₀_{i−2}/(2r_i), r_i = h_{i−1}/h_i;
    first order on the first step, and the last step (to σ = 0) returns x̂₀.
    That last step, from n = T/K, limits the order on this grid: on the
    Gaussian toy of tests/diffusion/test_samplers.py both samplers' error
    against the exact ODE solution halves per doubling of K, DPM-Solver++'s
    at ~1/2.7 of DDIM's (20 steps: 0.024 vs 0.064).
  * Classifier-free guidance (Ho & Salimans, 2022):
    ε = ε_u + w (ε_c − ε_u) on every channel. (DiT's `forward_with_cfg`
    guides only the first 3 of 4 latent channels, a GLIDE leftover kept for
    reproducibility; its scale 1.5 on 3 channels ≈ 1.375 on all 4.)
    `power_cosine_scale` is DiMR's/MDT's ramp
    w(n) = 1 + (w − 1)(1 − cos(π (1 − n/T)^p))/2: 1 at pure noise.
"""
import jax
import jax.numpy as jnp
import numpy as np


def step_grid(schedule, num_steps):
  """Steps T = n_0 > n_1 > ... > n_K = 0 in equal strides.

  K model evaluations, the last at n = T/K, whose x̂₀ is the sample: the
  grid of diffusers' DPM-Solver ("linspace" spacing, zero final sigma).
  """
  if not 1 <= num_steps <= schedule.num_steps:
    raise ValueError(f"num_steps={num_steps}: between 1 and "
                     f"{schedule.num_steps}")
  grid = np.round(np.linspace(schedule.num_steps, 0, num_steps + 1))
  return grid.astype(np.int32)  # numpy: segments slice it at trace time.


def power_cosine_scale(w_max, power, num_steps=1000):
  """DiMR's guidance ramp: a function of step `[batch]` → w `[batch]`."""
  def scale(step):
    frac = 1.0 - step.astype(jnp.float32) / num_steps
    return 1.0 + (w_max - 1.0) * (1.0 - jnp.cos(jnp.pi * frac**power)) / 2
  return scale


def classifier_free_guidance(eps_fn, null_class, scale):
  """ε_u + w (ε_c − ε_u), w a number or a function of the step.

  With a constant w = 1 this is the conditional model itself (no
  unconditional pass is made).
  """
  if not callable(scale) and scale == 1.0:
    return eps_fn

  def guided(x, step, labels):
    both = eps_fn(jnp.concatenate([x, x]), jnp.concatenate([step, step]),
                  jnp.concatenate([labels, jnp.full_like(labels, null_class)]))
    cond, uncond = jnp.split(both, 2)
    w = scale(step) if callable(scale) else jnp.asarray(scale, x.dtype)
    w = jnp.reshape(w, jnp.shape(w) + (1,) * (x.ndim - jnp.ndim(w)))
    return uncond + w * (cond - uncond)

  return guided


def _batch_step(step, x):
  return jnp.full(x.shape[:1], step, jnp.int32)


def check_grid(schedule, grid):
  """A descending step grid (numpy or jnp ints) in 0..T, as jnp int32.

  Samplers run on any such grid: `step_grid`'s full T → 0, or a segment
  of it (LightMotion samples T → T0, edits the latent, then goes on).
  """
  steps = np.asarray(grid)
  if (steps.ndim != 1 or len(steps) < 2 or np.any(np.diff(steps) >= 0) or
      steps[-1] < 0 or steps[0] > schedule.num_steps):
    raise ValueError(f"grid {steps.tolist()}: at least 2 strictly "
                     f"decreasing steps in 0..{schedule.num_steps}")
  return jnp.asarray(steps, jnp.int32)


def ddim_sample(eps_fn, schedule, noise, num_steps=None, labels=None, eta=0.0,
                rng=None, grid=None):
  """DDIM from x_T = noise to x_0; eta > 0 needs `rng`.

  `grid` (descending steps) replaces the default `step_grid(num_steps)`:
  the sampler then runs from `grid[0]` to `grid[-1]`.
  """
  if eta > 0 and rng is None:
    raise ValueError("ddim_sample with eta > 0 needs rng=")
  grid = check_grid(schedule, step_grid(schedule, num_steps)
                    if grid is None else grid)
  num_steps = grid.shape[0] - 1
  keys = (jax.random.split(rng, num_steps) if rng is not None else
          jnp.zeros((num_steps, 2), jnp.uint32))

  def one_step(x, inputs):
    step, prev, key = inputs
    abar, abar_prev = schedule.alphas_cumprod[step], schedule.alphas_cumprod[
        prev]
    eps = eps_fn(x, _batch_step(step, x), labels)
    x0 = (x - jnp.sqrt(1 - abar) * eps) / jnp.sqrt(abar)
    sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar) *
                           (1 - abar / abar_prev))
    x = (jnp.sqrt(abar_prev) * x0 +
         jnp.sqrt(jnp.maximum(1 - abar_prev - sigma**2, 0.0)) * eps)
    if eta > 0:
      x = x + sigma * jax.random.normal(key, x.shape, x.dtype)
    return x, None

  x, _ = jax.lax.scan(one_step, noise, (grid[:-1], grid[1:], keys))
  return x


def ddpm_sample(eps_fn, schedule, noise, rng, num_steps=None, labels=None,
                grid=None):
  """Ancestral DDPM (σ² = β̃), every step by default; = DDIM with η = 1."""
  if grid is None:
    grid = step_grid(schedule, num_steps or schedule.num_steps)
  return ddim_sample(eps_fn, schedule, noise, labels=labels, eta=1.0,
                     rng=rng, grid=grid)


def dpm_solver_pp_2m(eps_fn, schedule, noise, num_steps=None, labels=None,
                     grid=None):
  """DPM-Solver++(2M) from x_T = noise to x_0 (deterministic).

  With `grid`, from `grid[0]` to `grid[-1]`; each call starts first-order
  (the multistep history does not carry across calls).
  """
  if grid is None:
    grid = step_grid(schedule, num_steps)
  to_data = int(np.asarray(grid)[-1]) == 0
  grid = check_grid(schedule, grid)
  num_steps = grid.shape[0] - 1
  alpha, sigma = schedule.alpha_sigma(grid)
  # λ at the last point (σ = 0) is +∞; that step returns x̂₀ instead.
  lam = jnp.log(alpha) - jnp.log(jnp.maximum(sigma, 1e-20))
  index = jnp.arange(num_steps)

  def one_step(carry, i):
    x, x0_prev, h_prev = carry
    eps = eps_fn(x, _batch_step(grid[i], x), labels)
    x0 = (x - sigma[i] * eps) / alpha[i]
    h = lam[i + 1] - lam[i]
    r = h_prev / h
    second = (1 + 1 / (2 * r)) * x0 - x0_prev / (2 * r)
    d = jnp.where(i == 0, x0, second)
    x_next = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * jnp.expm1(-h) * d
    if to_data:
      x_next = jnp.where(i == num_steps - 1, x0, x_next)
    return (x_next, x0, h), None

  (x, _, _), _ = jax.lax.scan(
      one_step, (noise, jnp.zeros_like(noise), jnp.ones((), noise.dtype)),
      index)
  return x
