r"""Where the high-frequency error of diffusion samples comes from: one-pixel
speckle, or grain all over.

  python scripts/sample_texture.py runs/diffusion_fmnist16_dit_tdln \
      runs/diffusion_fmnist16_dimr [--prefix=dpm_solver_pp_20] [--out=t.json]

Reads the samples a finished evaluation cached in
`<workdir>/samples/<prefix>/` (no sampling) and the run's test split, and
prints one row per run, after the test set's own row:

  * speckled: the fraction of images with at least one isolated bright pixel
    (`fid.isolated_bright_pixels`: above 0, every neighbour below −0.5);
  * hf_error: `fid.high_frequency_spectral_error` against the test set (the
    number in results.json), and `hf_error_unspeckled`, the same without the
    speckled images: if speckle caused the error, this drops;
  * hf_log_ratio: the signed mean log₁₀(power / test power) over the same
    band (> 0: more high-frequency power than real images, grain; < 0:
    smoother);
  * highpass_fg / highpass_bg: mean (x − 3×3 box mean)² on pixels above /
    below −0.8 (garment / background), what the grain is made of.
"""
import argparse
import glob
import json
import os

import numpy as np


def load_samples(workdir, prefix):
  files = sorted(glob.glob(os.path.join(workdir, "samples", prefix,
                                        "batch_*.npy")))
  if not files:
    raise SystemExit(f"error: no cached samples in {workdir}/samples/{prefix}"
                     " (run its evaluation first: experiments.train or "
                     "experiments.sample)")
  with open(os.path.join(workdir, "samples", prefix, "meta.json")) as f:
    count = json.load(f)["num_samples"]
  return np.concatenate([np.load(f) for f in files])[:count]


def texture_stats(images, real):
  """The statistics of the module docstring for `images` against `real`."""
  # pylint: disable=g-import-not-at-top
  from efficient.diffusion import fid
  speckled = fid.isolated_bright_pixels(images).any(axis=(1, 2))
  fg, bg = fid.highpass_energy(images)
  clean = images[~speckled] if (~speckled).any() else images
  return dict(
      num_images=len(images), speckled=float(speckled.mean()),
      hf_error=fid.high_frequency_spectral_error(images, real),
      hf_error_unspeckled=fid.high_frequency_spectral_error(clean, real),
      hf_log_ratio=float(np.mean(fid.high_frequency_log_ratio(images, real))),
      highpass_fg=fg, highpass_bg=bg)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--prefix", default="dpm_solver_pp_20")
  parser.add_argument("--out", default=None, help="JSON path (optional).")
  args = parser.parse_args()
  # pylint: disable=g-import-not-at-top
  from efficient.diffusion import fid
  from efficient.diffusion import training
  _, task, _, builder, _ = training.load_run(os.path.abspath(args.workdirs[0]))
  real, _ = fid.load_images(builder.as_data_source(split="test"),
                            task.transform)
  rows = {"test set": texture_stats(real, real)}
  for workdir in args.workdirs:
    rows[workdir] = texture_stats(load_samples(workdir, args.prefix), real)
  keys = list(rows["test set"])
  width = max(map(len, rows))
  print(" " * width + "".join(f"  {k:>10}" for k in keys))
  for name, row in rows.items():
    print(f"{name:<{width}}" + "".join(
        f"  {row[k]:>{max(10, len(k))}{'.4f' if isinstance(row[k], float) else ''}}"
        for k in keys))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
