"""scripts/bench_kernels.py runs on CPU and writes its JSON (no timing)."""
import json
import subprocess
import sys

from tests import conftest


def test_bench_kernels_cpu_reports_xla_rows_and_skips_pallas(tmp_path):
  out = tmp_path / "kernels.json"
  result = subprocess.run(
      [sys.executable, "scripts/bench_kernels.py", "--lengths", "128",
       "--heads", "2", "--head_dim", "16", "--block_per_row", "2",
       "--repeats", "1", "--out", str(out)], cwd=conftest.REPO,
      env=conftest.subprocess_env(devices=1), capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  records = {r["method"]: r for r in json.loads(out.read_text())}
  assert set(records) == {"softmax", "mra_xla", "mra_pallas", "yoso_xla",
                          "yoso_pallas"}
  for method in ("softmax", "mra_xla", "yoso_xla"):
    r = records[method]
    assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["fwd_bwd_tflops"] > 0
    assert r["peak_tflops"] > 0 and r["peak_gbps"] > 0
  assert records["mra_pallas"]["note"].startswith("not run")
  assert records["yoso_pallas"]["note"].startswith("not run")
  assert "| mra_xla | 128 |" in result.stdout
