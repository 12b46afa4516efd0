"""configs/diffusion.py: every variant builds its model; count_params.py
prints the published sizes for the presets."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import diffusion
from efficient import models
from tests import conftest


# One variant per distinct smoke model (the ImageNet presets share theirs).
@pytest.mark.parametrize("variant", ["dit_xl2", "fmnist_dit", "fmnist_dit_tdln",
                                     "dimr_xl2r", "fmnist_dimr",
                                     "fmnist16_dimr"])
def test_smoke_variant_runs_a_forward_pass(variant):
  config = diffusion.get_config(f"{variant},smoke")
  kwargs = config.model.to_dict()
  model = models.get_model(kwargs.pop("name"), **kwargs)
  size, channels = kwargs["input_size"], kwargs["in_channels"]
  x = jnp.ones((2, size, size, channels))
  step, label = jnp.asarray([1, 1000]), jnp.asarray([0, 1])
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x, step, label)
  out = jax.jit(model.apply)(variables, x, step, label)
  last = out[-1] if isinstance(out, list) else out
  assert last.shape[:3] == x.shape[:3]
  assert config.diffusion.label_dropout == 0.1


def test_every_variant_builds_a_config():
  for variant in list(diffusion.DIT) + list(diffusion.DIMR):
    for smoke in ("", ",smoke"):
      config = diffusion.get_config(variant + smoke)
      assert config.model.name in ("dit", "dimr")


def test_unknown_variant_names_the_choices():
  with pytest.raises(ValueError, match="dimr_xl2r"):
    diffusion.get_config("dit_xxl")


@pytest.mark.parametrize("variant,params,gmacs", [
    ("dit_xl2", 675e6, 118.6), ("dimr_xl2r", 505.05e6, 160.2)])
def test_count_params_prints_the_published_sizes(variant, params, gmacs):
  result = subprocess.run(
      [sys.executable, "scripts/count_params.py",
       f"--config=configs/diffusion.py:{variant}"], cwd=conftest.REPO,
      env=conftest.subprocess_env(devices=1), capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout)
  assert abs(out["params"] / params - 1) < 0.01
  assert abs(out["gmacs"] / gmacs - 1) < 0.02


@pytest.mark.parametrize("variant", ["fmnist_dit", "fmnist_dimr"])
def test_optimizer_settings_build_and_spare_the_tdln_gates(variant):
  from efficient.train import optimizer  # pylint: disable=g-import-not-at-top
  config = diffusion.get_config(f"{variant},smoke")
  tx, schedule = optimizer.make_optimizer(config.optimizer,
                                          config.total_steps)
  assert float(schedule(config.total_steps)) > 0
  mask = optimizer.decay_mask(
      {"norm": {"nodecay_weight": jnp.ones(2), "param0": jnp.ones(2)}},
      config.optimizer.no_decay)
  assert not mask["norm"]["nodecay_weight"]
  assert mask["norm"]["param0"]  # p₀, p₁ keep their decay (official code).
  assert tx is not None
