"""The classification task of the trainer: sequences (ListOps, sequential
images) → one of `num_classes` labels, trained with cross-entropy.

A task tells `trainer.train_and_evaluate` what a batch is and what to do
with it: `transform` (grain Map, example → fixed-shape arrays),
`batch_spec`, `init_params`, `loss`, `sums` (for evaluators) and
`final_results`. `efficient.diffusion.training.DiffusionTask` is the other
one; `config.task` picks.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from efficient.data import pipeline


class ClassificationTask:
  """Token sequences `[batch, max_length]` (0 = padding) and integer labels."""

  def __init__(self, config, model):
    self.model = model
    self.max_length = config.data.max_length
    self.num_classes = config.model.num_classes
    self.seed = config.seed
    self.transform = pipeline.PadTokens(self.max_length)

  def batch_spec(self, batch_size):
    return {"tokens": ((batch_size, self.max_length), jnp.int32),
            "label": ((batch_size,), jnp.int32)}

  def init_params(self, rng):
    dummy = jnp.zeros((1, self.max_length), jnp.int32)
    return self.model.init(rng, dummy, train=False)["params"]

  def loss(self, params, batch, rng):
    logits = self.model.apply(
        {"params": params}, batch["tokens"], train=True,
        rngs={"dropout": rng, "hash": jax.random.fold_in(rng, 1)})
    xent = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]).mean()
    accuracy = (jnp.argmax(logits, -1) == batch["label"]).mean()
    return xent, {"accuracy": accuracy}

  def sums(self, params, batch):
    # Randomised attention (sampled YOSO) evaluates with one fixed draw.
    logits = self.model.apply({"params": params}, batch["tokens"],
                              train=False,
                              rngs={"hash": jax.random.PRNGKey(self.seed)})
    weight = batch["weight"]
    xent = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"])
    correct = jnp.argmax(logits, -1) == batch["label"]
    return {"loss": (xent * weight).sum(), "accuracy": (correct * weight).sum(),
            "count": weight.sum()}

  def final_results(self, params, *, builder, splits, **unused):
    """Constant-prediction baselines of each split.

    `<split>/majority_baseline`: accuracy of always predicting the train
    split's most common class (what a model that learnt only the label prior
    scores). `<split>/largest_class`: the share of the split's own most
    common class, the best any constant prediction can score on it; the two
    differ where the train split is tiny (ListOps' `lra_heldout`, whose train
    split has 32 examples) or its label prior differs from the split's.
    """
    del params, unused
    train_counts = pipeline.label_counts(builder.as_data_source(split="train"),
                                         self.num_classes, limit=20_000)
    majority = int(np.argmax(train_counts))
    out = {}
    for split in splits:
      counts = pipeline.label_counts(builder.as_data_source(split=split),
                                     self.num_classes)
      out[f"{split}/majority_baseline"] = float(counts[majority] /
                                                counts.sum())
      out[f"{split}/largest_class"] = float(counts.max() / counts.sum())
    return out
