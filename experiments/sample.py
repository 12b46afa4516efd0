r"""Samples a trained diffusion run and scores the samples (FID, KID, class
accuracy), adding them to the run's results.json.

  python -m experiments.sample --workdir=runs/diffusion_fmnist_dit \
      --sampler=ddpm --num_steps=250 --num_samples=2000
  python -m experiments.sample --workdir=runs/diffusion_fmnist_dit \
      --sampler=dpm_solver_pp --num_steps=20 --num_samples=2000

Reads `<workdir>/config.json` and the latest checkpoint's EMA weights (the
raw weights when the run had no EMA); unset flags take `config.sample`'s
values. Keys land as `<sampler>_<num_steps>[_n<num_samples>]/...` (the
suffix when the count differs from the config's), with a sample grid PNG
beside them, so several samplers can be compared in one results.json.
"""
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished training run.")
_SAMPLER = flags.DEFINE_enum("sampler", None, ["dpm_solver_pp", "ddim", "ddpm"],
                             "Sampler (default: the config's).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Sampler steps.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Samples to score.")
_GUIDANCE = flags.DEFINE_float("guidance", None, "Guidance weight w.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Samples per batch.")
_SEED = flags.DEFINE_integer("seed", None, "Noise seed.")
flags.mark_flags_as_required(["workdir"])


def sample_run(workdir, **overrides):
  """Evaluates samples of the run in `workdir`; returns the new results."""
  # pylint: disable=g-import-not-at-top
  import jax
  from efficient.diffusion import training

  workdir = os.path.abspath(workdir)
  config, task, params, builder, mesh = training.load_run(workdir)
  sample = dict(config.sample.to_dict())
  default_count = sample["num_samples"]
  sample.update({k: v for k, v in overrides.items() if v is not None})
  prefix = f"{sample['sampler']}_{sample['num_steps']}"
  if sample["num_samples"] != default_count:  # Keep both counts apart.
    prefix += f"_n{sample['num_samples']}"
  with jax.set_mesh(mesh):
    results = training.evaluate_samples(task, params, builder, mesh=mesh,
                                        workdir=workdir, prefix=prefix,
                                        **sample)
  results_path = os.path.join(workdir, "results.json")
  merged = {}
  if os.path.exists(results_path):
    with open(results_path) as f:
      merged = json.load(f)
  merged.update(results)
  if jax.process_index() == 0:
    with open(results_path, "w") as f:
      json.dump(merged, f, indent=2)
  logging.info("Added to %s: %s", results_path, sorted(results))
  return results


def main(argv):
  del argv
  from efficient.errors import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    results = sample_run(_WORKDIR.value, sampler=_SAMPLER.value,
                         num_steps=_NUM_STEPS.value,
                         num_samples=_NUM_SAMPLES.value,
                         guidance=_GUIDANCE.value, batch_size=_BATCH.value,
                         seed=_SEED.value)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  width = max(map(len, results))
  for k, v in results.items():
    print(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else
          f"  {k:<{width}}  {v}")


if __name__ == "__main__":
  app.run(main)
