"""scripts/bench_attention.py runs and writes its JSON contract (no timing)."""
import json
import subprocess
import sys

from tests import conftest


def test_bench_attention_writes_one_record_per_method_and_length(tmp_path):
  out, png = tmp_path / "bench.json", tmp_path / "bench.png"
  result = subprocess.run(
      [sys.executable, "scripts/bench_attention.py", "--lengths", "64,128",
       "--repeats", "1", "--heads", "2", "--head_dim", "8", "--out", str(out),
       "--plot", str(png)], cwd=conftest.REPO,
      env=conftest.subprocess_env(devices=1), capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  records = json.loads(out.read_text())
  assert {(r["method"], r["length"]) for r in records} == {
      (m, n) for m in ("softmax", "nystrom", "yoso", "yoso-tables", "mra")
      for n in (64, 128)}
  for r in records:
    assert r["time_ms"] > 0 and len(r["times_ms"]) == 1
    assert r["temp_bytes"] >= 0 and r["device"] and r["platform"] == "cpu"
  for method in ("nystrom", "yoso", "yoso-tables", "mra"):
    assert f"| {method} | 128 |" in result.stdout
  assert png.stat().st_size > 1000
