"""scripts/bench_kernels.py runs on CPU and writes its JSON (no timing)."""
import json
import subprocess
import sys

import jax
import numpy as np

from tests import conftest

sys.path.insert(0, str(conftest.REPO / "scripts"))
import bench_kernels  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_bench_kernels_cpu_reports_xla_rows_and_skips_pallas(tmp_path):
  out = tmp_path / "kernels.json"
  result = subprocess.run(
      [sys.executable, "scripts/bench_kernels.py", "--lengths", "128",
       "--heads", "2", "--head_dim", "16", "--block_per_row", "2",
       "--repeats", "1", "--mra_tunings", "8x3", "--heads_per_step", "1",
       "--out", str(out)], cwd=conftest.REPO,
      env=conftest.subprocess_env(devices=1), capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = json.loads(out.read_text())
  records = {r["method"]: r for r in rows if "tuning" not in r}
  assert set(records) == set(bench_kernels.METHODS)
  (tuned,) = [r for r in rows if "tuning" in r]  # --mra_tunings' extra row.
  assert tuned["method"] == "mra_blocks_pallas" and tuned["tuning"] == "8x3"
  assert records["mra_xla"]["mra_precision"] == "input"
  assert records["mra_xla"]["heads_per_step"] == 1
  for method in ("softmax", "mra_xla", "yoso_xla", "mra_blocks_xla"):
    r = records[method]
    assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["fwd_bwd_tflops"] > 0
    assert r["peak_tflops"] > 0 and r["peak_gbps"] > 0
  assert records["mra_pallas"]["note"].startswith("not run")
  assert records["yoso_pallas"]["note"].startswith("not run")
  assert records["yoso_pallas_sorted"]["note"].startswith("not run")
  assert "| mra_xla | 128 |" in result.stdout


def test_kernel_only_rows_compute_the_same_attention():
  """The two mra_blocks_* functions time the same computation (the Pallas
  one interpreted here), with the requested blocks per row."""
  n, heads, per_row = 128, 2, 2
  chosen = bench_kernels.fixed_selection(n, heads, per_row)
  assert (chosen.sum(-1) == per_row).all()
  assert chosen[:, np.arange(4), np.arange(4)].all()
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(key, (1, n, heads, 16)) for key in keys)
  xla = bench_kernels.blocks_fn("xla", n, heads, per_row)(q, k, v)
  pallas = bench_kernels.blocks_fn("pallas", n, heads, per_row,
                                   tuning=(8, 3))(q, k, v)
  np.testing.assert_allclose(pallas, xla, rtol=1e-4, atol=1e-5)
