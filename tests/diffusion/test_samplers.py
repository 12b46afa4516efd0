"""Schedules and samplers on a Gaussian toy whose optimal denoiser is
analytic: x₀ ~ N(μ_y, diag(s²)) per class y, so
E[ε | x_n] = σ (α² s² + σ²)⁻¹ (x_n − α μ) and the probability-flow ODE maps
x_T to μ + s (x_T − α_T μ) / sqrt(α_T² s² + σ_T²) exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient.diffusion import samplers
from efficient.diffusion import schedules

MEANS = jnp.asarray([[2.0, -1.0], [-3.0, 0.5], [0.0, 0.0]])  # class 2: null.
SCALE = jnp.asarray([0.5, 1.5])
NULL = 2


def optimal_eps(schedule):
  """The exact ε-predictor for the toy (the null class has mean 0)."""
  def eps_fn(x, step, labels):
    alpha, sigma = schedule.alpha_sigma(step)
    alpha, sigma = alpha[:, None], sigma[:, None]
    mean = MEANS[labels] if labels is not None else MEANS[NULL]
    return sigma * (x - alpha * mean) / (alpha**2 * SCALE**2 + sigma**2)
  return eps_fn


def test_betas_match_the_published_schedules():
  linear = schedules.make_betas("linear")
  np.testing.assert_allclose(linear[[0, -1]], [1e-4, 0.02])
  scaled = schedules.make_betas("scaled_linear")
  np.testing.assert_allclose(scaled[[0, -1]], [0.00085, 0.012])
  np.testing.assert_allclose(np.sqrt(scaled), np.linspace(
      0.00085**0.5, 0.012**0.5, 1000))
  sched = schedules.Schedule.create("linear")
  assert float(sched.alphas_cumprod[0]) == 1.0
  np.testing.assert_allclose(sched.alphas_cumprod[1:],
                             np.cumprod(1 - linear), rtol=1e-5)
  with pytest.raises(ValueError, match="beta schedule"):
    schedules.make_betas("cosine")


def test_epsilon_loss_of_the_optimal_denoiser_is_the_posterior_variance():
  sched = schedules.Schedule.create("linear", 1000)
  rng = jax.random.PRNGKey(0)
  labels = jnp.zeros((20000,), jnp.int32)
  x0 = MEANS[0] + SCALE * jax.random.normal(rng, (20000, 2))
  loss = schedules.epsilon_loss(optimal_eps(sched), x0,
                                jax.random.PRNGKey(1), sched, labels)
  # E ‖ε − E[ε|x]‖² per dim = 1 − σ²/(α² s² + σ²) averaged over n.
  alpha, sigma = sched.alpha_sigma(jnp.arange(1, 1001))
  want = jnp.mean(1 - sigma[:, None]**2 /
                  (alpha[:, None]**2 * SCALE**2 + sigma[:, None]**2))
  assert abs(float(loss.mean()) - float(want)) < 0.02
  # A wrong model is measurably worse.
  zero = schedules.epsilon_loss(lambda x, n, y: jnp.zeros_like(x), x0,
                                jax.random.PRNGKey(1), sched, labels)
  assert float(zero.mean()) > float(loss.mean()) + 0.3


def test_label_dropout_rate_and_null_class():
  labels = jnp.zeros((100000,), jnp.int32)
  dropped = schedules.drop_labels(jax.random.PRNGKey(0), labels, 10)
  assert set(np.unique(dropped).tolist()) == {0, 10}
  assert abs(float((dropped == 10).mean()) - 0.1) < 0.005


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm"])
def test_samples_have_the_data_mean_and_covariance(sampler):
  sched = schedules.Schedule.create("linear", 1000)
  n = 4000
  labels = jnp.ones((n,), jnp.int32)
  noise = jax.random.normal(jax.random.PRNGKey(3), (n, 2))
  eps_fn = optimal_eps(sched)
  if sampler == "ddpm":
    x = samplers.ddpm_sample(eps_fn, sched, noise, jax.random.PRNGKey(4),
                             labels=labels)
  elif sampler == "ddim":
    x = samplers.ddim_sample(eps_fn, sched, noise, 100, labels)
  else:
    x = samplers.dpm_solver_pp_2m(eps_fn, sched, noise, 20, labels)
  x = np.asarray(x)
  # 5 standard errors of the mean; the variance within 10%.
  np.testing.assert_allclose(x.mean(0), MEANS[1], atol=5 * 1.5 / np.sqrt(n))
  np.testing.assert_allclose(x.std(0), SCALE, rtol=0.1)
  assert abs(np.corrcoef(x.T)[0, 1]) < 5 / np.sqrt(n)


def _ode_solution(sched, noise, labels):
  alpha, sigma = sched.alpha_sigma(jnp.full(noise.shape[:1], 1000))
  mean = MEANS[labels]
  return mean + SCALE * (noise - alpha[:, None] * mean) / jnp.sqrt(
      alpha[:, None]**2 * SCALE**2 + sigma[:, None]**2)


def test_ddim_eta0_is_deterministic_and_dpm_solver_is_closer_to_the_ode():
  sched = schedules.Schedule.create("scaled_linear", 1000)
  labels = jnp.asarray([0, 1, 0, 1] * 64)
  noise = jax.random.normal(jax.random.PRNGKey(5), (256, 2))
  eps_fn = optimal_eps(sched)
  a = samplers.ddim_sample(eps_fn, sched, noise, 20, labels)
  b = samplers.ddim_sample(eps_fn, sched, noise, 20, labels)
  np.testing.assert_array_equal(a, b)
  exact = _ode_solution(sched, noise, labels)
  ddim_err = float(jnp.abs(a - exact).mean())
  dpm_err = float(jnp.abs(samplers.dpm_solver_pp_2m(
      eps_fn, sched, noise, 20, labels) - exact).mean())
  assert dpm_err < ddim_err / 2, (dpm_err, ddim_err)
  # Both converge to it with more steps (measured: DDIM 0.064 → 0.0018 from
  # 20 to 1000 steps; DPM-Solver++ 0.024 → 0.011 from 20 to 40).
  fine = samplers.ddim_sample(eps_fn, sched, noise, 1000, labels)
  assert float(jnp.abs(fine - exact).mean()) < ddim_err / 5
  finer = samplers.dpm_solver_pp_2m(eps_fn, sched, noise, 40, labels)
  assert float(jnp.abs(finer - exact).mean()) < dpm_err / 1.5


def test_guidance_weight_one_is_the_conditional_model():
  sched = schedules.Schedule.create("linear", 1000)
  eps_fn = optimal_eps(sched)
  x = jax.random.normal(jax.random.PRNGKey(6), (8, 2))
  step = jnp.full((8,), 500)
  labels = jnp.asarray([0, 1] * 4)
  guided = samplers.classifier_free_guidance(eps_fn, NULL, 1.0)
  np.testing.assert_array_equal(guided(x, step, labels),
                                eps_fn(x, step, labels))
  # A ramp that is 1 everywhere goes through the two-pass path: equal too.
  ramp = samplers.classifier_free_guidance(eps_fn, NULL, lambda n: 1.0 + 0 * n)
  np.testing.assert_allclose(ramp(x, step, labels), eps_fn(x, step, labels),
                             atol=1e-6)
  # w = 3: ε_u + 3 (ε_c − ε_u), on every channel.
  strong = samplers.classifier_free_guidance(eps_fn, NULL, 3.0)(x, step,
                                                                labels)
  cond = eps_fn(x, step, labels)
  uncond = eps_fn(x, step, jnp.full_like(labels, NULL))
  np.testing.assert_allclose(strong, uncond + 3 * (cond - uncond), atol=1e-6)
  assert np.all(np.abs(np.asarray(strong - cond)).max(0) > 1e-3)


def test_power_cosine_ramp_ends():
  scale = samplers.power_cosine_scale(4.0, 2.0, 1000)
  w = scale(jnp.asarray([1000, 500, 0]))
  np.testing.assert_allclose(np.asarray(w)[[0, 2]], [1.0, 4.0], atol=1e-6)
  assert 1.0 < float(w[1]) < 4.0


def test_velocity_round_trip_recovers_noise_and_data():
  schedule = schedules.Schedule.create("linear", 1000)
  rng = np.random.default_rng(5)
  x0 = jnp.asarray(rng.uniform(-1, 1, (4, 3, 5)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32)
  step = jnp.array([1, 300, 700, 1000])
  x_n = schedule.add_noise(x0, noise, step)
  v = schedule.velocity(x0, noise, step)
  np.testing.assert_allclose(schedule.epsilon_from_velocity(v, x_n, step),
                             noise, atol=2e-5)
  alpha, sigma = schedule.alpha_sigma(step)
  np.testing.assert_allclose(alpha[:, None, None] * x_n -
                             sigma[:, None, None] * v, x0, atol=2e-5)
