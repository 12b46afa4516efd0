"""Plots loss and accuracy curves of runs from their metrics.jsonl.

One run: its train (per-batch) and validation curves and the final test
point. Several runs: their validation curves overlaid, one colour per run,
with each run's reported test accuracy (`best/test/accuracy` where the run
selected best weights) as a marker at its `best/step`.

  python scripts/plot_metrics.py runs/quickstart [--out runs/quickstart/curves.png]
  python scripts/plot_metrics.py runs/lra_listops_* --out lra_listops.png
"""
import argparse
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def series(records, key):
  points = [(r["step"], r[key]) for r in records if key in r]
  return [p[0] for p in points], [p[1] for p in points]


def load(workdir):
  """(metrics records, results dict or {}) of one run."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  results = {}
  results_path = os.path.join(workdir, "results.json")
  if os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
  return records, results


def name(workdir):
  """The workdir's last two path parts (e.g. h200/listops_softmax)."""
  return "/".join(os.path.normpath(workdir).split(os.sep)[-2:])


def plot_one(axes, records, results):
  for ax, metric in zip(axes, ("loss", "accuracy")):
    ax.plot(*series(records, f"train/{metric}"), lw=0.8, alpha=0.6,
            label="train (batch)")
    ax.plot(*series(records, f"validation/{metric}"), "o-", label="validation")
    if f"test/{metric}" in results:
      ax.plot([results["step"]], [results[f"test/{metric}"]], "s",
              label="test (final)")


def plot_many(axes, runs):
  for i, (workdir, (records, results)) in enumerate(runs.items()):
    color = f"C{i}"
    for ax, metric in zip(axes, ("loss", "accuracy")):
      ax.plot(*series(records, f"validation/{metric}"), "o-", ms=3, c=color,
              label=f"{name(workdir)} (validation)")
      prefix = "best/" if "best/step" in results else ""
      if f"{prefix}test/{metric}" in results:
        step = results.get("best/step", results["step"])
        ax.plot([step], [results[f"{prefix}test/{metric}"]], "s", c=color,
                mec="k", label=f"{name(workdir)} (test)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--out", default=None, help="PNG path (default: "
                      "<workdir>/curves.png; required for several runs)")
  args = parser.parse_args()
  if len(args.workdirs) > 1 and not args.out:
    parser.error("--out is required when plotting several runs")
  runs = {w: load(w) for w in args.workdirs}
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  if len(runs) == 1:
    (records, results), = runs.values()
    plot_one(axes, records, results)
    fig.suptitle(name(args.workdirs[0]))
  else:
    plot_many(axes, runs)
    results = {}
  if "test/majority_baseline" in results:
    axes[1].axhline(results["test/majority_baseline"], ls="--", c="gray",
                    label="majority class")
  for ax, metric in zip(axes, ("loss", "accuracy")):
    ax.set(xlabel="step", title=metric)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  out = args.out or os.path.join(args.workdirs[0], "curves.png")
  fig.savefig(out, dpi=110)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
