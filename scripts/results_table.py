"""Prints results.json files as one markdown table (one column per run).

  python scripts/results_table.py runs/quickstart/results.json [more.json ...]
  python scripts/results_table.py --seeds runs/diffusion_*/results.json
  python scripts/results_table.py --seeds runs/diffusion_*/results.json \
      --plot=seeds.png --metrics=dpm_solver_pp_20/fid,dpm_solver_pp_20/kid

With --seeds, runs that differ only in seed are pooled: a run's variant is
its folder's name without a trailing `_s<N>` (runs/diffusion_fmnist16_dit and
runs/diffusion_fmnist16_dit_s1 are one variant), its seed the `seed` of the
config.json beside results.json (else the `_s<N>` suffix, else 0). Each
numeric metric is printed as mean ± sample standard deviation over seeds
(ddof=1; a single seed prints its value alone), one column per variant.
--plot draws the --metrics named, one panel each: every seed as a dot, the
mean as a tick, ± one sample std as whiskers, so a seed spread can be read off
beside the gap between variants.
"""
import argparse
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


def group_by_variant(paths):
  """{variant: {seed: (path, results)}}, in the order variants first appear."""
  groups = {}
  for path in paths:
    variant, seed = variant_and_seed(path)
    if seed in groups.setdefault(variant, {}):
      sys.exit(f"{path}: seed {seed} of {variant!r} given twice "
               f"(also {groups[variant][seed][0]})")
    groups[variant][seed] = (path, _load(path))
  return groups


def main_seeds(groups):
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


def plot_seeds(groups, metrics, path):
  """One panel per metric: seeds as dots, mean as a tick, ± sample std."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  variants = list(groups)
  fig, axes = plt.subplots(1, len(metrics), squeeze=False,
                           figsize=(1.2 + 0.9 * len(variants) * len(metrics),
                                    3.6))
  for ax, metric in zip(axes[0], metrics):
    for x, variant in enumerate(variants):
      seeds = sorted(s for s in groups[variant]
                     if metric in groups[variant][s][1])
      values = [groups[variant][s][1][metric] for s in seeds]
      if not values:
        continue
      mean = statistics.fmean(values)
      ax.hlines(mean, x - 0.25, x + 0.25, color="C0", linewidth=2)
      if len(values) > 1:
        ax.errorbar(x, mean, yerr=statistics.stdev(values), color="C0",
                    capsize=4)
      ax.scatter([x] * len(values), values, color="k", s=12, zorder=3)
      for seed, value in zip(seeds, values):
        ax.annotate(str(seed), (x, value), xytext=(4, 0), fontsize=7,
                    textcoords="offset points", va="center")
    ax.set_title(metric, fontsize=9)
    ax.set_xlim(-0.6, len(variants) - 0.4)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants, rotation=30, ha="right", fontsize=8)
  fig.suptitle("dots: seeds (labelled); tick: mean; whiskers: ± sample std",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f"wrote {path}")


def parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("paths", nargs="+", metavar="results.json")
  parser.add_argument("--seeds", action="store_true",
                      help="pool runs that differ only in seed")
  parser.add_argument("--plot", metavar="PNG",
                      help="with --seeds: draw --metrics per variant")
  parser.add_argument("--metrics", default="",
                      help="comma-separated results.json keys for --plot")
  args = parser.parse_args(argv)
  if args.plot and not args.seeds:
    parser.error("--plot needs --seeds")
  if args.plot and not args.metrics:
    parser.error("--plot needs --metrics=key[,key...]")
  return args


if __name__ == "__main__":
  args = parse_args(sys.argv[1:])
  if not args.seeds:
    main(args.paths)
  else:
    groups = group_by_variant(args.paths)
    main_seeds(groups)
    if args.plot:
      metrics = args.metrics.split(",")
      known = {k for runs in groups.values() for _, r in runs.values()
               for k in r}
      missing = [m for m in metrics if m not in known]
      if missing:
        sys.exit(f"--metrics: {missing} in no results.json "
                 f"(known: {sorted(known)})")
      plot_seeds(groups, metrics, args.plot)
