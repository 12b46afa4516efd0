r"""Parameters and forward GMACs of a config's diffusion model, as JSON.

  python scripts/count_params.py --config=configs/diffusion.py:dimr_xl2r
  python scripts/count_params.py --config=configs/video.py:static,size=16

The model is instantiated abstractly (`jax.eval_shape`: no weights are
allocated, so the 1B-parameter presets count in seconds on a laptop). GMACs
are the analytic multiply-accumulates of one forward pass for one image,
or one video of all its frames (the convention of the DiT and DiMR papers' "GFLOPs"), from
`training.forward_macs` (dit's, dimr's or video_dit's).
"""
import json

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from efficient import models
from efficient.diffusion import training

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "Config file, `path.py:arg`.")
flags.mark_flags_as_required(["config"])
DIFFUSION_MODELS = ("dit", "dimr", "video_dit")


def count(model_config):
  kwargs = dict(model_config)
  name = kwargs.pop("name")
  if name not in DIFFUSION_MODELS:
    raise ValueError(f"model {name!r} is not a diffusion model "
                     f"{list(DIFFUSION_MODELS)}")
  model = models.get_model(name, **kwargs)
  size, channels = kwargs["input_size"], kwargs["in_channels"]
  frames = (kwargs["num_frames"],) if name == "video_dit" else ()
  x = jax.ShapeDtypeStruct((1, *frames, size, size, channels), jnp.float32)
  n = jax.ShapeDtypeStruct((1,), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, n, n)
  params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))
  return {"model": name, "params": params, "params_millions": params / 1e6,
          "gmacs": training.forward_macs(model) / 1e9}


def main(argv):
  del argv
  print(json.dumps(count(_CONFIG.value.model.to_dict()), indent=1))


if __name__ == "__main__":
  app.run(main)
