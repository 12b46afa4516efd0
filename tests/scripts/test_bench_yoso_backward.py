"""scripts/bench_yoso_backward.py runs and writes its JSON (no timing)."""
import json
import subprocess
import sys

from tests import conftest


def test_bench_yoso_backward_writes_both_methods_per_density(tmp_path):
  out, png = tmp_path / "bench.json", tmp_path / "bench.png"
  result = subprocess.run(
      [sys.executable, "scripts/bench_yoso_backward.py", "--length", "64",
       "--head_dim", "8", "--hashes", "2", "--hash_bits", "4",
       "--pairs_per_query", "2,16", "--repeats", "1", "--out", str(out),
       "--plot", str(png)], cwd=conftest.REPO,
      env=conftest.subprocess_env(devices=1), capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  records = json.loads(out.read_text())
  assert {(r["method"], r["pairs_per_query"]) for r in records} == {
      (m, p) for m in ("pairs", "tables") for p in (2.0, 16.0)}
  assert all(r["time_ms"] > 0 and r["platform"] == "cpu" for r in records)
  assert "| 16 |" in result.stdout and png.stat().st_size > 1000
