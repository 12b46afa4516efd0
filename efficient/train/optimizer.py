"""Optimizer and learning-rate schedule from `config.optimizer`.

  config.optimizer = dict(
      name="adamw", lr=1e-4, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0,
      schedule="linear",      # after warm-up: "linear" | "cosine" | "constant"
      warmup_steps=1000,      # linear 0 -> lr
      end_lr_factor=0.0,      # lr at the last step, as a fraction of lr
      grad_clip=0.0,          # global-norm clipping; 0 disables
      no_decay=(r".*bias$", r".*scale$", r".*embed.*"),  # regexes on paths
  )

Weight decay applies to every parameter whose "/"-joined path matches none of
`no_decay` (biases, norm scales and embeddings by default).
"""
import re

import jax
import optax


def make_schedule(cfg, total_steps):
  """Linear warm-up to `lr`, then linear/cosine decay or constant."""
  lr, warmup = cfg.lr, int(cfg.warmup_steps)
  end = cfg.lr * cfg.end_lr_factor
  decay_steps = max(total_steps - warmup, 1)
  if cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.end_lr_factor)
  elif cfg.schedule == "linear":
    after = optax.linear_schedule(lr, end, decay_steps)
  elif cfg.schedule == "constant":
    after = optax.constant_schedule(lr)
  else:
    raise ValueError(f"config.optimizer.schedule={cfg.schedule!r} is not one "
                     "of 'linear', 'cosine', 'constant'")
  if warmup <= 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def decay_mask(params, no_decay):
  """True where weight decay applies (path matches none of `no_decay`)."""
  patterns = [re.compile(p) for p in no_decay]

  def decays(path, _):
    # Dict keys only: Linen's LogicallyPartitioned boxes add a ".value" step.
    name = "/".join(str(k.key) for k in path
                    if isinstance(k, jax.tree_util.DictKey))
    return not any(p.fullmatch(name) for p in patterns)

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg, total_steps):
  """Returns (optax transformation, schedule)."""
  schedule = make_schedule(cfg, total_steps)
  if cfg.name != "adamw":
    raise ValueError(f"config.optimizer.name={cfg.name!r}: only 'adamw'")
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(optax.adamw(
      schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
      weight_decay=cfg.weight_decay,
      mask=lambda p: decay_mask(p, cfg.no_decay)))
  return optax.chain(*parts), schedule
