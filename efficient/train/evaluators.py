"""Evaluators: `Evaluator.run(params) -> {"<split>/<metric>": value}`.

One evaluator per split (big_vision style). An evaluator gets plain
arguments, never the config: the split's data source, the task's example
`transform`, and `sums_fn(params, batch) -> {metric: Σ weight·value,
"count": Σ weight}` (weight 0 marks the padding that makes whole batches), so
each metric is averaged over every real example exactly once, on any number
of devices and processes.
"""
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from efficient.data import pipeline
from efficient.train import sharding


class Evaluator:
  """Example-weighted means of `sums_fn`'s metrics over one whole split."""

  def __init__(self, name, source, *, sums_fn, transform, mesh,
               global_batch_size, progress=False):
    self.name, self.source, self.mesh = name, source, mesh
    self.transform, self.batch_size = transform, global_batch_size
    self.progress = progress and jax.process_index() == 0  # A bar per run.
    self._sums = jax.jit(sums_fn)

  def run(self, params):
    totals = None
    batches = pipeline.eval_batches(
        self.source, global_batch_size=self.batch_size,
        transform=self.transform)
    for batch in tqdm.tqdm(batches, desc=f"evaluate {self.name}", unit="batch",
                           total=pipeline.num_eval_batches(
                               self.source, self.batch_size),
                           leave=False, mininterval=2.0,
                           disable=not self.progress):
      sums = self._sums(params, sharding.shard_batch(batch, self.mesh))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.tree.map(lambda x: float(np.asarray(x)), totals)
    count = totals.pop("count")
    return {f"{self.name}/{k}": v / count for k, v in totals.items()}
