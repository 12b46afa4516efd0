"""Pallas kernels for the hot paths, each beside a plain-jnp reference."""
import jax
from jax.experimental.pallas import triton as pl_triton

GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def resolve_platform(platform=None):
  """The backend a kernel compiles for: `platform`, else the default one."""
  return platform or jax.default_backend()


def triton_params(platform=None, num_warps=4, num_stages=2):
  """Triton compiler parameters on GPU, None elsewhere.

  Our GPU kernels are written in Triton's model (`pl.ds` row loads, vector
  atomics); Mosaic GPU, Pallas's GPU default, refuses them, so every GPU
  pallas_call passes these to select the Triton backend. `num_warps` and
  `num_stages` are Triton's (warps per program, software-pipelining depth).
  """
  if resolve_platform(platform) in GPU_PLATFORMS:
    return pl_triton.CompilerParams(num_warps=num_warps,
                                    num_stages=num_stages)
  return None
