"""Time-dependent LayerNorm (TD-LN) of DiMR (Liu et al., "Alleviating
Distortion in Image Generation via Multi-Resolution Diffusion Models and
Time-Dependent Layer Normalization", NeurIPS 2024, arXiv 2406.09416), as
the official code defines it (qihao067/DiMR
`libs/core/sigmoid/{kernel,module}.py`).

Every time-dependent parameter vector p (one value per channel) stores p₀,
p₁ and per-channel gate weights w, b, and at time t is

  p(t) = p₁ + sigmoid((1 + w) ⊙ t + b) ⊙ (p₀ − p₁),

with t = 2n/T − 1 ∈ (−1, 1] for the discrete step n of T (the code's
`log_snr / 4` with `log_snr = 8n/T − 4`: linear in n, not a true log-SNR).
p₀ = p₁ at initialisation (ones for scales, zeros for shifts) and w = b = 0,
so p(t) starts constant and the gates get no gradient until p₀ and p₁ part.

  TD-LN(x; t)      = γ(t) ⊙ LayerNorm(x) + β(t)     (no affine LN, eps 1e-5)
  TD-RMSNorm(x; t) = γ(t) ⊙ x / (rms(x) + 1e-8)     (the blocks' norm)

The paper's text writes one scalar gate per layer (σ(w·t + b)); the code's
gates are per channel, which is the default here (`scalar_gate=True` gives
the paper's form). The gate parameters are named `nodecay_weight` /
`nodecay_bias` as in the code, whose optimizer exempts them from weight
decay: `NO_DECAY` is the pattern to add to an optimizer config's
`no_decay` (efficient/train/optimizer.py), p₀ and p₁ keep their decay.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

NO_DECAY = r".*nodecay_.*"  # The gates: no weight decay (official code).


def diffusion_time(step, num_steps=1000):
  """t = 2n/T − 1 for discrete diffusion step n ∈ {1..T} (DiMR's input)."""
  return 2.0 * jnp.asarray(step, jnp.float32) / num_steps - 1.0


def time_dependent(p0, p1, weight, bias, t):
  """p(t) = p₁ + sigmoid((1 + w) t + b) (p₀ − p₁); t [batch] → [batch, d]."""
  t = jnp.asarray(t, jnp.float32)[:, None]
  return p1 + jax.nn.sigmoid((1.0 + weight) * t + bias) * (p0 - p1)


class TimeDependentParameter(nn.Module):
  """A per-channel vector that moves from p₁ (t → −∞) to p₀ (t → +∞)."""
  features: int
  init_value: float = 1.0
  scalar_gate: bool = False

  @nn.compact
  def __call__(self, t):
    const = nn.initializers.constant(self.init_value)
    p0 = self.param("param0", const, (self.features,))
    p1 = self.param("param1", const, (self.features,))
    gate_shape = () if self.scalar_gate else (self.features,)
    weight = self.param("nodecay_weight", nn.initializers.zeros, gate_shape)
    bias = self.param("nodecay_bias", nn.initializers.zeros, gate_shape)
    return time_dependent(p0, p1, weight, bias, t)


def _broadcast(p, x):
  """[batch, d] → [batch, 1, ..., 1, d] against x [batch, ..., d]."""
  return p.reshape(p.shape[:1] + (1,) * (x.ndim - 2) + p.shape[1:])


class TDLayerNorm(nn.Module):
  """γ(t) ⊙ LayerNorm(x) + β(t); x `[batch, ..., d]`, t `[batch]`."""
  eps: float = 1e-5
  scalar_gate: bool = False

  @nn.compact
  def __call__(self, x, t):
    d = x.shape[-1]
    scale = TimeDependentParameter(d, 1.0, self.scalar_gate, name="scale")(t)
    shift = TimeDependentParameter(d, 0.0, self.scalar_gate, name="shift")(t)
    normed = nn.LayerNorm(epsilon=self.eps, use_scale=False, use_bias=False,
                          dtype=jnp.float32)(x)
    return (_broadcast(scale, x) * normed + _broadcast(shift, x)).astype(
        x.dtype)


class TDRMSNorm(nn.Module):
  """γ(t) ⊙ x / (rms(x) + eps), eps outside the root as in the code."""
  eps: float = 1e-8
  scalar_gate: bool = False

  @nn.compact
  def __call__(self, x, t):
    scale = TimeDependentParameter(x.shape[-1], 1.0, self.scalar_gate,
                                   name="scale")(t)
    x32 = x.astype(jnp.float32)
    rms = jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True))
    return (_broadcast(scale, x) * x32 / (rms + self.eps)).astype(x.dtype)
