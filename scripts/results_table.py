"""Prints results.json files as one markdown table (one column per run).

  python scripts/results_table.py runs/quickstart/results.json [more.json ...]
"""
import json
import sys


def _fmt(value):
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def main(paths):
  runs = []
  for path in paths:
    with open(path) as f:
      runs.append(json.load(f))
  keys = list(dict.fromkeys(k for run in runs for k in run))
  print("| metric | " + " | ".join(paths) + " |")
  print("|---|" + "---|" * len(paths))
  for key in keys:
    print(f"| {key} | " + " | ".join(_fmt(run.get(key, "")) for run in runs)
          + " |")


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit(__doc__)
  main(sys.argv[1:])
