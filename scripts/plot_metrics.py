"""Plots loss and accuracy curves of a run from its metrics.jsonl.

  python scripts/plot_metrics.py runs/quickstart [--out runs/quickstart/curves.png]
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir")
  parser.add_argument("--out", default=None,
                      help="PNG path (default: <workdir>/curves.png)")
  args = parser.parse_args()
  with open(os.path.join(args.workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  results = {}
  results_path = os.path.join(args.workdir, "results.json")
  if os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
  for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
    ax.plot(*series(records, f"train/{metric}"), lw=0.8, alpha=0.6,
            label="train (batch)")
    ax.plot(*series(records, f"validation/{metric}"), "o-", label="validation")
    if f"test/{metric}" in results:
      ax.plot([results["step"]], [results[f"test/{metric}"]], "s",
              label="test (final)")
    ax.set(xlabel="step", title=metric)
  if "test/majority_baseline" in results:
    ax_acc.axhline(results["test/majority_baseline"], ls="--", c="gray",
                   label="majority class")
  for ax in (ax_loss, ax_acc):
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.suptitle(os.path.basename(os.path.normpath(args.workdir)))
  fig.tight_layout()
  out = args.out or os.path.join(args.workdir, "curves.png")
  fig.savefig(out, dpi=110)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
