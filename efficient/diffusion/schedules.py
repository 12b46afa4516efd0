"""Discrete DDPM noise schedules and the ε-prediction objective.

DDPM (Ho et al., 2020, arXiv 2006.11239): for steps n ∈ {1..T},

  x_n = sqrt(ᾱ_n) x₀ + sqrt(1 − ᾱ_n) ε,   ᾱ_n = Π_{i≤n} (1 − β_i)   (Eq. 4)

trained by L_simple = E ‖ε − ε_θ(x_n, n)‖² (Eq. 14) with n uniform.

Betas: "linear" 1e-4 → 0.02 (DDPM, DiT) and Stable Diffusion's
"scaled_linear" (sqrt-linear from 0.00085 to 0.012, squared), DiMR's choice.
Step n is 1-based as in DiMR's `train.py` (it prepends β₀ = 0), so
ᾱ_n = `alphas_cumprod[n − 1]`, diffusers' indexing shifted by one.

Classifier-free guidance training (Ho & Salimans, 2022): labels are replaced
by a null class with probability 0.1 (`drop_labels`).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear")


def make_betas(kind="linear", num_steps=1000, start=None, end=None):
  """β_1..β_T as float64 numpy (DDPM: linear 1e-4..0.02; SD: scaled)."""
  if kind == "linear":
    return np.linspace(start or 1e-4, end or 0.02, num_steps)
  if kind == "scaled_linear":
    return np.linspace((start or 0.00085)**0.5, (end or 0.012)**0.5,
                       num_steps)**2
  raise ValueError(f"beta schedule {kind!r}: one of {BETA_SCHEDULES}")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """ᾱ_n for n = 0..T (ᾱ_0 = 1: clean data), as a jnp float32 table."""
  alphas_cumprod: jax.Array  # [T + 1]

  @classmethod
  def create(cls, kind="linear", num_steps=1000, start=None, end=None):
    betas = make_betas(kind, num_steps, start, end)
    cumprod = np.concatenate([[1.0], np.cumprod(1.0 - betas)])
    return cls(jnp.asarray(cumprod, jnp.float32))

  @property
  def num_steps(self):
    return self.alphas_cumprod.shape[0] - 1

  def alpha_sigma(self, step):
    """(sqrt(ᾱ_n), sqrt(1 − ᾱ_n)) for integer steps n (any shape)."""
    abar = self.alphas_cumprod[step]
    return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)

  def _coefficients(self, step, like):
    """(sqrt(ᾱ_n), sqrt(1 − ᾱ_n)) for steps `[batch]`, broadcast to `like`."""
    alpha, sigma = self.alpha_sigma(step)
    expand = lambda a: a.reshape(a.shape + (1,) * (like.ndim - a.ndim))
    return expand(alpha), expand(sigma)

  def add_noise(self, x0, noise, step):
    """x_n = sqrt(ᾱ_n) x₀ + sqrt(1 − ᾱ_n) ε, step `[batch]`."""
    alpha, sigma = self._coefficients(step, x0)
    return alpha * x0 + sigma * noise

  def velocity(self, x0, noise, step):
    """v = sqrt(ᾱ_n) ε − sqrt(1 − ᾱ_n) x₀, the v-prediction target
    (Salimans & Ho, 2022, arXiv 2202.00512, §4 and App. D)."""
    alpha, sigma = self._coefficients(step, x0)
    return alpha * noise - sigma * x0

  def epsilon_from_velocity(self, v, x_n, step):
    """ε = sqrt(ᾱ_n) v + sqrt(1 − ᾱ_n) x_n (since ᾱ + (1 − ᾱ) = 1): a
    v-prediction model as the ε-predictor every sampler here takes."""
    alpha, sigma = self._coefficients(step, x_n)
    return alpha * v + sigma * x_n


jax.tree_util.register_dataclass(Schedule, data_fields=["alphas_cumprod"],
                                 meta_fields=[])


def drop_labels(rng, labels, null_class, rate=0.1):
  """Labels replaced by `null_class` with probability `rate` (CFG training)."""
  drop = jax.random.bernoulli(rng, rate, labels.shape)
  return jnp.where(drop, null_class, labels)


def epsilon_loss(eps_fn, x0, rng, schedule, labels=None):
  """L_simple: mean ‖ε − ε_θ(x_n, n, y)‖², n ~ U{1..T}, ε ~ N(0, I).

  `eps_fn(x_n, step, labels)` is the model's noise prediction. Returns the
  per-example losses `[batch]` (mean over all other axes).
  """
  step_rng, noise_rng = jax.random.split(rng)
  step = jax.random.randint(step_rng, x0.shape[:1], 1,
                            schedule.num_steps + 1)
  noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  pred = eps_fn(schedule.add_noise(x0, noise, step), step, labels)
  return jnp.mean((pred - noise)**2, axis=tuple(range(1, x0.ndim)))
