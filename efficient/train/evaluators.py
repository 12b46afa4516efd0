"""Evaluators: `Evaluator.run(params) -> {"<name>/<metric>": value}`.

One evaluator per split (big_vision style). They get plain arguments from the
trainer, never the config.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from efficient.data import pipeline
from efficient.train import sharding


class ClassificationEvaluator:
  """Accuracy and mean cross-entropy over one whole split."""

  def __init__(self, name, source, *, apply_fn, mesh, global_batch_size,
               max_length):
    self.name, self.source, self.mesh = name, source, mesh
    self.batch_size, self.max_length = global_batch_size, max_length

    def sums(params, batch):
      logits = apply_fn(params, batch["tokens"])
      weight = batch["weight"]
      xent = optax.softmax_cross_entropy_with_integer_labels(
          logits, batch["label"])
      correct = jnp.argmax(logits, -1) == batch["label"]
      return {"loss": (xent * weight).sum(),
              "correct": (correct * weight).sum(),
              "count": weight.sum()}

    self._sums = jax.jit(sums)

  def run(self, params):
    totals = None
    for batch in pipeline.eval_batches(
        self.source, global_batch_size=self.batch_size,
        max_length=self.max_length):
      sums = self._sums(params, sharding.shard_batch(batch, self.mesh))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.tree.map(lambda x: float(np.asarray(x)), totals)
    return {f"{self.name}/accuracy": totals["correct"] / totals["count"],
            f"{self.name}/loss": totals["loss"] / totals["count"]}
