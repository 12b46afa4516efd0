"""Test set-up: 8 fake CPU devices, quick compiles, shared smoke data.

The environment is set before jax is imported anywhere, so every test sees
`jax.device_count() == 8` (meshes and sharding are exercised on CPU).
Subprocess tests get the same variables through `subprocess_env()`.
"""
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_disable_most_optimizations", True)

REPO = pathlib.Path(__file__).resolve().parents[1]


def subprocess_env(devices=8, **extra):
  """Environment for running project code in a child process."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run_module(module, *args, devices=8, timeout=300, cwd=REPO, **env):
  """Runs `python -m module args...` (from the repo root); returns the result."""
  return subprocess.run(
      [sys.executable, "-m", module, *map(str, args)], cwd=cwd,
      env=subprocess_env(devices, **env), capture_output=True, text=True,
      timeout=timeout, check=False)


def flatten(tree, prefix=""):
  """Nested dict -> {"a/b/c": numpy array} (for comparing checkpoints)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = np.asarray(value)
  return out


@pytest.fixture(scope="session")
def listops_data_dir(tmp_path_factory):
  """A TFDS data dir holding listops/smoke, built once per test session."""
  from efficient.data import listops  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp("tfds")
  listops.build("smoke", data_dir=str(data_dir))
  return str(data_dir)


def write_fashion_idx(directory, split, images, labels):
  """Fashion-MNIST idx files (the Debian package's layout) for tests."""
  import gzip  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  header = np.array([2051, len(images), 28, 28], ">i4").tobytes()
  with gzip.open(directory / f"{split}-images-idx3-ubyte.gz", "wb") as f:
    f.write(header + images.tobytes())
  header = np.array([2049, len(labels)], ">i4").tobytes()
  with gzip.open(directory / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
    f.write(header + labels.tobytes())


def write_fake_fashion(directory, num_test=80):
  """Fake Fashion-MNIST idx files in `directory` (5,100 train images, so the
  builder's 5,000-image validation cut and its `smoke` config work): noise
  with one bright bar per class, at a class-dependent row."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, n in (("train", 5100), ("t10k", num_test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
      images[i, 2 + 2 * c:4 + 2 * c, 4:24] = 250
    write_fashion_idx(directory, split, images, labels)
  return directory
