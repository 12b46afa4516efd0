"""Prints results.json files as one markdown table (one column per run).

  python scripts/results_table.py runs/quickstart/results.json [more.json ...]
  python scripts/results_table.py --seeds runs/diffusion_*/results.json

With --seeds, runs that differ only in seed are pooled: a run's variant is
its folder's name without a trailing `_s<N>` (runs/diffusion_fmnist16_dit and
runs/diffusion_fmnist16_dit_s1 are one variant), its seed the `seed` of the
config.json beside results.json (else the `_s<N>` suffix, else 0). Each
numeric metric is printed as mean ± sample standard deviation over seeds
(ddof=1; a single seed prints its value alone), one column per variant.
"""
import json
import os
import re
import statistics
import sys

_SEED_SUFFIX = re.compile(r"_s(\d+)$")


def _fmt(value):
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def _load(path):
  with open(path) as f:
    return json.load(f)


def _print_table(columns, rows):
  print("| " + " | ".join(["metric"] + columns) + " |")
  print("|---|" + "---|" * len(columns))
  for row in rows:
    print("| " + " | ".join(row) + " |")


def main(paths):
  runs = [_load(path) for path in paths]
  keys = list(dict.fromkeys(k for run in runs for k in run))
  _print_table(paths,
               [[key] + [_fmt(run.get(key, "")) for run in runs]
                for key in keys])


def variant_and_seed(path):
  """(variant, seed) of a results.json, from its folder and config.json."""
  folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
  match = _SEED_SUFFIX.search(folder)
  variant = folder[:match.start()] if match else folder
  seed = int(match.group(1)) if match else 0
  config_path = os.path.join(os.path.dirname(path), "config.json")
  if os.path.exists(config_path):
    seed = int(_load(config_path).get("seed", seed))
  return variant, seed


def main_seeds(paths):
  groups = {}
  for path in paths:
    variant, seed = variant_and_seed(path)
    if seed in groups.setdefault(variant, {}):
      sys.exit(f"{path}: seed {seed} of {variant!r} given twice "
               f"(also {groups[variant][seed][0]})")
    groups[variant][seed] = (path, _load(path))
  keys = list(dict.fromkeys(
      k for runs in groups.values() for _, run in runs.values() for k in run))
  rows = [["seeds"] + [", ".join(map(str, sorted(runs)))
                       for runs in groups.values()]]
  for key in keys:
    row = [key]
    for runs in groups.values():
      values = [runs[seed][1][key] for seed in sorted(runs)
                if key in runs[seed][1]]
      numeric = [v for v in values
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
      if not values:
        row.append("")
      elif len(numeric) == len(values) and len(values) > 1:
        mean, std = statistics.fmean(numeric), statistics.stdev(numeric)
        row.append(f"{mean:.4g} ± {std:.2g} (n={len(values)})")
      elif len(set(map(str, values))) == 1:
        row.append(_fmt(values[0]))
      else:
        row.append(" / ".join(_fmt(v) for v in values))
    rows.append(row)
  _print_table(list(groups), rows)


if __name__ == "__main__":
  args = sys.argv[1:]
  if not args or args == ["--seeds"]:
    sys.exit(__doc__)
  if args[0] == "--seeds":
    main_seeds(args[1:])
  else:
    main(args)
