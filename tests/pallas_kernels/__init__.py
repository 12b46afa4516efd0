"""Kernel tests run interpreted on a CPU and compiled on the accelerator
itself (on a lent GPU, `bash scripts/gpu_session.sh kernels` runs them)."""
import jax


def interpret(platform=None):
  """True unless the kernel's platform is this machine's accelerator."""
  backend = jax.default_backend()
  platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
  return backend == "cpu" or (platform or backend) != backend


# jax >= 0.11 asks the GPU itself for its compute capability while lowering
# a Triton kernel, and fails on a machine without one ("No supported GPU
# devices found, please specify an abstract GPU device"; seen with jax
# 0.11.2, even on an H200 when the test lowers for "cuda" from the CPU
# path). The tests that lower for CUDA on a CPU machine then skip: on a GPU
# the compiled tests cover the same kernels.
LOWERS_TRITON_WITHOUT_GPU = jax.__version_info__ < (0, 11)
