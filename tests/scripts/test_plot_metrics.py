"""scripts/plot_metrics.py: one run's curves, several runs overlaid."""
import json
import subprocess
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from scripts import plot_metrics  # pylint: disable=wrong-import-position
from tests import conftest  # pylint: disable=wrong-import-position


def _run(root, name, accuracies, results):
  path = root / name
  path.mkdir()
  lines = [{"step": 10 * (i + 1), "validation/accuracy": a,
            "validation/loss": 1 - a} for i, a in enumerate(accuracies)]
  lines.append({"step": 5, "train/loss": 2.0, "train/accuracy": 0.1})
  (path / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)))
  (path / "results.json").write_text(json.dumps(results))
  return str(path)


def test_several_runs_mark_the_reported_test_at_the_best_step(tmp_path):
  best = _run(tmp_path, "best", [0.2, 0.5, 0.4], {
      "step": 30, "test/accuracy": 0.3, "best/step": 20,
      "best/test/accuracy": 0.45})
  final = _run(tmp_path, "final", [0.1, 0.2], {"step": 20,
                                                "test/accuracy": 0.15})
  _, axes = plt.subplots(1, 2)
  plot_metrics.plot_many(axes, {w: plot_metrics.load(w) for w in (best, final)})
  points = {l.get_label(): list(zip(*l.get_data())) for l in axes[1].lines}
  b, f = plot_metrics.name(best), plot_metrics.name(final)
  assert b.endswith("/best") and f.endswith("/final")
  assert points[f"{b} (validation)"] == [(10, 0.2), (20, 0.5), (30, 0.4)]
  assert points[f"{b} (test)"] == [(20, 0.45)]  # Not the final 0.3.
  assert points[f"{f} (test)"] == [(20, 0.15)]
  plt.close("all")


def test_cli_writes_a_png_and_wants_out_for_several_runs(tmp_path):
  run = _run(tmp_path, "a", [0.2, 0.3], {"step": 20, "test/accuracy": 0.25})
  cli = lambda *args: subprocess.run(
      [sys.executable, "scripts/plot_metrics.py", *args], cwd=conftest.REPO,
      capture_output=True, text=True)
  assert cli(run).returncode == 0
  assert (tmp_path / "a" / "curves.png").stat().st_size > 1000
  failed = cli(run, run)
  assert failed.returncode == 2 and "--out is required" in failed.stderr
