"""scripts/bench_decoding.py on the tiny target: one record per forward,
relative costs against the 1-token target step, JSON and PNG written."""
import json
import sys

from tests import conftest

sys.path.insert(0, str(conftest.REPO / "scripts"))
import bench_decoding  # noqa: E402  pylint: disable=wrong-import-position


def test_bench_decoding_writes_records(tmp_path):
  out, plot = tmp_path / "b.json", tmp_path / "b.png"
  records = bench_decoding.main(["--target", "tiny", "--k", "2", "--out",
                                 str(out), "--plot", str(plot)])
  names = [r["forward"] for r in records]
  assert names[0] == "target, 1 token" and records[0]["relative_cost"] == 1
  assert "PARD draft, 4 tokens" in names and "EDA head step, 1 token" in names
  assert all(r["ms"] > 0 for r in records)
  assert json.loads(out.read_text()) == records
  assert plot.exists()
