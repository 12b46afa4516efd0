"""scripts/gpu_session.sh, dry-run on the CPU with tiny settings: the
commands a lent GPU will run (kernel tests + benchmark; LRA runs) work and
leave their outputs where the script says."""
import json
import os
import subprocess
import sys
import tarfile

from tests import conftest


def _run(tmp_path, *args):
  env = dict(os.environ, GPU_SESSION_SMOKE="1", PY=sys.executable,
             OUT=str(tmp_path / "out"), TFDS_DATA_DIR=str(tmp_path / "tfds"),
             RUNS=str(tmp_path / "runs"), JAX_PLATFORMS="cpu",
             BUNDLE=str(tmp_path / "bundle.tgz"), SAMPLE_N="16")
  result = subprocess.run(["bash", "scripts/gpu_session.sh", *args],
                          cwd=conftest.REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  return result.stdout


def test_kernels_then_lra_modes_write_their_outputs(tmp_path):
  out = _run(tmp_path, "kernels")
  assert "pallas tests: exit 0 (1 passed" in out
  bench = json.loads((tmp_path / "out/bench_kernels_gpu.json").read_text())
  assert {r["method"] for r in bench} == {"softmax", "mra_xla"}
  attention = json.loads(
      (tmp_path / "out/bench_attention_gpu.json").read_text())
  assert {r["method"] for r in attention} == {"softmax", "nystrom"}
  with tarfile.open(tmp_path / "bundle.tgz") as bundle:  # What comes back.
    assert {"out/bench_kernels_gpu.json", "out/bench_attention_gpu.json"} <= set(
        bundle.getnames())
  out = _run(tmp_path, "lra", "softmax")
  assert "softmax: exit 0" in out
  results = json.loads(
      (tmp_path / "out/lra_listops_softmax/results.json").read_text())
  assert 0 <= results["test/accuracy"] <= 1
  assert "jax" in (tmp_path / "out/device.txt").read_text()


def test_models_mode_trains_samples_and_evaluates(tmp_path):
  out = _run(tmp_path, "models")
  assert "bench_kernels: exit 0" in out and "pallas tests: exit 0" in out
  for step in ("fmnist16_dit_s0: train exit 0", "fmnist16_dit_s0: sample exit 0",
               "video16_v: train exit 0", "video16_v: sdedit exit 0",
               "video16_v: lightmotion exit 0"):
    assert step in out, out
  results = json.loads(
      (tmp_path / "out/fmnist16_dit_s0/results.json").read_text())
  assert {"ddpm_250/fid", "dpm_solver_pp_20/fid"} <= set(results)
  with tarfile.open(tmp_path / "bundle.tgz") as bundle:  # No video in it:
    names = set(bundle.getnames())  # those travel as files of their own.
  assert "out/fmnist16_dit_s0/results.json" in names
  assert not any(n.startswith("out/video") for n in names)
  with tarfile.open(tmp_path / "out/video16_v.tgz") as run:
    names = set(run.getnames())  # Its files and its last checkpoint.
  assert {"out/video16_v/lightmotion/results.json", "config.json",
          "checkpoints/2/_CHECKPOINT_METADATA"} <= names


def test_unknown_mode_prints_usage():
  result = subprocess.run(["bash", "scripts/gpu_session.sh", "bogus"],
                          cwd=conftest.REPO, capture_output=True, text=True,
                          check=False)
  assert result.returncode == 2 and "usage:" in result.stderr
