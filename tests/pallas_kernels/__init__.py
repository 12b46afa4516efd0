"""Kernel tests run interpreted on a CPU and compiled on the accelerator
itself (on a lent GPU, `bash scripts/gpu_session.sh kernels` runs them)."""
import jax


def interpret(platform=None):
  """True unless the kernel's platform is this machine's accelerator."""
  backend = jax.default_backend()
  platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
  return backend == "cpu" or (platform or backend) != backend
