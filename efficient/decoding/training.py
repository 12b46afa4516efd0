"""Trainer tasks for draft models (`config.task`):

  "language_model": next-token cross-entropy over `draft_text` chunks -- the
      autoregressive draft. On a `*_regen` dataset (the target's own
      continuations) this is sequence-level distillation: the draft learns
      the target's outputs, not the corpus (reference/draft.md §10.3).
  "pard": PARD's parallel-draft adaptation (drafts/pard.py): each chunk
      becomes K segments (real tokens, then K−1 mask segments) with COD
      row dropping and the PARD attention mask; cross-entropy averaged over
      all supervised rows.
  "eda": the EDA / EAGLE-1 head (drafts/eda.py) on the target's features,
      computed on the fly by a frozen copy of the target held in the params
      ({"head", "target"}; the target gets stop_gradient, weight decay must
      be 0, so AdamW leaves it exactly as loaded). `draft.stage` 1 trains
      the whole head; 2 (adaptation) re-initialises the private expert and
      trains only it and fc (`eda.TRAINABLE_STAGE2`).

`config.draft` options:
  target: the target (efficient.decoding.targets name) the draft serves.
  init_embedding ("language_model", "pard"): "target_pca" starts the
      draft's (tied) embedding from the target's, projected on its top `dim`
      principal directions and rescaled to the init std -- a small draft
      cannot learn a 49k-token embedding from a few hundred thousand tokens;
      "random" does not.
  init_params ("language_model"): a target name whose weights the model
      starts from (the target fine-tune of the EDA experiment), or "random".
  stage ("eda"): 1 or 2, as above.
  select ("eda"): EDA's sample selection for stage 2 -- "none" (every
      row), "mahalanobis" (our reconstruction, drafts/eda.py: the rows whose
      fine-tuned-target features lie farthest from the base target's
      features on `select_reference` text, `select_reference_rows` rows of
      its train split, base target `select_reference_target`) or "random"
      (the equal-budget ablation); keeps `select_fraction` of the train
      rows. Computed once (a target forward over the rows) and saved as
      <workdir>/selection.json, so a resumed run trains on the same rows.
For "pard" also num_segments (K, trained), cod_ratio, cod_ratio_min,
mask_id; `config.init_from` (an AR draft run) gives PARD its starting
point, and the mask token's embedding row is then set to the mean embedding
(`after_init`).
"""
import functools
import json
import os
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from efficient.decoding.drafts import pard


@functools.lru_cache(maxsize=2)
def target_embedding_pca(target_name, dim, std):
  """The target's embedding [V, d_target] projected to `dim` principal
  components (scaled so the entries have standard deviation `std`)."""
  from efficient.decoding import targets  # pylint: disable=g-import-not-at-top
  target = targets.load(target_name)
  table = np.asarray(target.params["params"]["embed"]["embedding"],
                     np.float64)
  centred = table - table.mean(0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  projected = centred @ vt[:dim].T
  return (projected / projected.std() * std).astype(np.float32)


class TokensAndWeights(grain.transforms.Map):

  def map(self, element):
    return {"tokens": np.asarray(element["tokens"], np.int32),
            "weights": np.asarray(element["weights"], np.float32)}


class PARDExample(grain.transforms.RandomMap):
  """draft_text chunk → PARD training example (COD drawn per example;
  `map`, used for evaluation, draws with a fixed seed)."""

  def __init__(self, num_segments, mask_id, ratio, ratio_min):
    self.num_segments, self.mask_id = num_segments, mask_id
    self.ratio, self.ratio_min = ratio, ratio_min

  def random_map(self, element, rng):
    tokens = np.asarray(element["tokens"], np.int32)
    ex = pard.training_example(tokens, self.num_segments, self.mask_id, rng,
                               self.ratio, self.ratio_min)
    # Weights of the source (0 after a generated eos) follow the targets.
    source_w = np.asarray(element["weights"], np.float32)
    ex["weights"] *= source_w[np.minimum(ex["positions"] + 1,
                                         len(tokens) - 1)]
    return ex

  def map(self, element):
    return self.random_map(element, np.random.default_rng(0))


class LanguageModelTask:
  """Next-token prediction on draft_text (the AR draft)."""

  def __init__(self, config, model):
    self.model = model
    self.seq_len = config.data.seq_len
    self.draft = config.get("draft", {})
    self.transform = TokensAndWeights()
    self.embedding = None  # computed here, eagerly: init_params is traced
    if self.draft.get("init_embedding", "random") == "target_pca":
      self.embedding = target_embedding_pca(self.draft["target"], model.dim,
                                            model.init_std)

  def batch_spec(self, batch_size):
    return {"tokens": ((batch_size, self.seq_len), jnp.int32),
            "weights": ((batch_size, self.seq_len), jnp.float32)}

  def init_params(self, rng):
    params = self.model.init(rng, jnp.zeros((1, 2), jnp.int32))["params"]
    if self.embedding is not None:
      params["embed"]["embedding"] = jnp.asarray(self.embedding)
    return params

  def after_init(self, params, fresh):
    """`draft.init_params = <target name>` starts from that target's weights
    (fine-tuning a target, e.g. SmolLM2 on Python source for EDA)."""
    del fresh
    name = self.draft.get("init_params", "random")
    if name == "random":
      return params
    from efficient.decoding import targets  # pylint: disable=g-import-not-at-top
    loaded = targets.load(name).params["params"]
    if jax.tree.structure(loaded) != jax.tree.structure(params) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(loaded),
                                           jax.tree.leaves(params))):
      raise ValueError(f"config.draft.init_params={name!r}: its weights do "
                       "not fit config.model")
    return loaded

  def _token_losses(self, params, batch):
    logits = self.model.apply({"params": params}, batch["tokens"][:, :-1])[0]
    labels = batch["tokens"][:, 1:]
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return xent, correct, batch["weights"][:, 1:]

  def loss(self, params, batch, rng):
    del rng
    xent, correct, w = self._token_losses(params, batch)
    total = jnp.maximum(w.sum(), 1.0)
    return (xent * w).sum() / total, {"accuracy": (correct * w).sum() / total}

  def sums(self, params, batch):
    xent, correct, w = self._token_losses(params, batch)
    w = w * batch["weight"][:, None]
    return {"loss": (xent * w).sum(), "accuracy": (correct * w).sum(),
            "count": w.sum()}

  def final_results(self, params, **unused):
    del unused
    return {"model/params": int(sum(x.size for x in jax.tree.leaves(params)))}


class PARDTask(LanguageModelTask):
  """PARD adaptation: K-segment rows with COD and the PARD mask."""

  def __init__(self, config, model):
    super().__init__(config, model)
    d = self.draft
    self.num_segments = d["num_segments"]
    self.mask_id = d["mask_id"]
    self.rows = pard.padded_length(self.seq_len, self.num_segments,
                                   d["cod_ratio"], d["cod_ratio_min"])
    self.transform = PARDExample(self.num_segments, self.mask_id,
                                 d["cod_ratio"], d["cod_ratio_min"])

  def batch_spec(self, batch_size):
    n = self.rows
    return {"inputs": ((batch_size, n), jnp.int32),
            "positions": ((batch_size, n), jnp.int32),
            "mask": ((batch_size, n, n), jnp.bool_),
            "labels": ((batch_size, n), jnp.int32),
            "weights": ((batch_size, n), jnp.float32)}

  def after_init(self, params, fresh):
    """After init_from (an AR draft): the mask token's row := the mean
    embedding, so mask inputs start as an 'average token'."""
    params = super().after_init(params, fresh)
    table = params["embed"]["embedding"]
    params["embed"]["embedding"] = table.at[self.mask_id].set(table.mean(0))
    return params

  def _token_losses(self, params, batch):
    logits = self.model.apply({"params": params}, batch["inputs"],
                              positions=batch["positions"],
                              mask=batch["mask"])[0]
    xent = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["labels"])
    correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
    return xent, correct, batch["weights"]


class EDATask(LanguageModelTask):
  """EDA head training on the target's features (see module docstring)."""

  def __init__(self, config, model):
    from efficient.decoding import lm, targets  # pylint: disable=g-import-not-at-top
    self.model = model
    self.seq_len = config.data.seq_len
    self.draft = config.draft
    self.stage = self.draft.get("stage", 1)
    self.data_config = config.data
    self.selection = None
    self.transform = TokensAndWeights()
    self.target_model = lm.Llama.from_config(
        targets.config_of(self.draft["target"]))
    if config.optimizer.weight_decay:
      raise ValueError("config.optimizer.weight_decay must be 0 for 'eda' "
                       "(frozen weights would decay)")

  def select_train(self, source, workdir):
    """The train rows EDA stage 2 learns from (`draft.select`); saved."""
    method = self.draft.get("select", "none")
    if method == "none":
      return source
    from efficient.data import pipeline  # pylint: disable=g-import-not-at-top
    path = os.path.join(workdir, "selection.json")
    if not os.path.exists(path):
      info = self._score_and_select(source, method)
      if jax.process_index() == 0:
        with open(path + ".tmp", "w") as f:
          json.dump(info, f)
        os.replace(path + ".tmp", path)
    else:
      with open(path) as f:
        info = json.load(f)
    if info["method"] != method or info["rows"] != len(source):
      raise ValueError(f"{path} was made for another selection "
                       f"({info['method']}, {info['rows']} rows); remove it")
    self.selection = info
    return pipeline.Subset(source, info["indices"])

  def _score_and_select(self, source, method):
    from absl import logging  # pylint: disable=g-import-not-at-top
    from efficient.data import pipeline  # pylint: disable=g-import-not-at-top
    from efficient.decoding import targets  # pylint: disable=g-import-not-at-top
    eda = eda_lib()
    d, start = self.draft, time.time()
    rows = [source[i] for i in range(len(source))]
    stack = lambda key, rs: np.stack([np.asarray(r[key]) for r in rs])  # noqa: E731
    prompt_len = int(rows[0]["prompt_len"])
    scores = np.zeros(len(rows))
    if method == "mahalanobis":
      ref_cfg = ml_collections.ConfigDict(self.data_config.to_dict())
      ref_cfg.builder_config = d["select_reference"]
      ref_source = pipeline.load_builder(ref_cfg).as_data_source(
          split="train")
      ref_rows = [ref_source[i] for i in range(
          min(len(ref_source), d["select_reference_rows"]))]
      logging.info("EDA selection: features of %d reference rows (%s, "
                   "target %s) and %d candidate rows (target %s).",
                   len(ref_rows), d["select_reference"],
                   d["select_reference_target"], len(rows), d["target"])
      base = targets.load(d["select_reference_target"])
      feats, mask = eda.response_features(
          base.model, base.params, stack("tokens", ref_rows),
          stack("weights", ref_rows), int(ref_rows[0]["prompt_len"]))
      reference = feats[mask > 0]
      tuned = targets.load(d["target"])
      feats, mask = eda.response_features(
          tuned.model, tuned.params, stack("tokens", rows),
          stack("weights", rows), prompt_len)
      scores = eda.mahalanobis_scores(reference, feats, mask)
    indices = eda.select_samples(scores, d["select_fraction"], method,
                                 seed=d.get("select_seed", 0))
    logging.info("EDA selection (%s): kept %d of %d rows in %.0f s.",
                 method, len(indices), len(rows), time.time() - start)
    out = {"method": method, "fraction": d["select_fraction"],
           "rows": len(rows), "kept": len(indices),
           "indices": indices.tolist(), "seconds": time.time() - start}
    if method == "mahalanobis":  # random selection scores nothing
      out.update(score_kept_mean=float(scores[indices].mean()),
                 score_all_mean=float(scores.mean()))
    return out

  def init_params(self, rng):
    d = self.model.dim
    head = self.model.init(rng, jnp.zeros((1, 2, d)), jnp.zeros((1, 2, d)))
    target = self.target_model.init(jax.random.fold_in(rng, 1),
                                    jnp.zeros((1, 2), jnp.int32))
    return {"head": head["params"], "target": target["params"]}

  def after_init(self, params, fresh):
    from efficient.decoding import targets  # pylint: disable=g-import-not-at-top
    params = dict(params)
    params["target"] = targets.load(self.draft["target"]).params["params"]
    if self.stage == 2:  # EDA stage 2: a new private expert
      params["head"] = dict(params["head"], private=fresh["head"]["private"])
    return params

  def trainable(self, params):
    head = {"params": params["head"]}
    if self.stage == 2:
      head = eda_lib().freeze(head)
    return head, {"params": jax.lax.stop_gradient(params["target"])}

  def _losses(self, params, batch, rng):
    head, target = self.trainable(params)
    _, features, _ = self.target_model.apply(target, batch["tokens"])
    return eda_lib().loss(self.model, head, self.target_model, target,
                          batch["tokens"], jax.lax.stop_gradient(features),
                          batch["weights"], rng)

  def loss(self, params, batch, rng):
    return self._losses(params, batch, rng)

  def sums(self, params, batch):
    """Token-weighted sums (padding examples weigh 0)."""
    sub = dict(batch, weights=batch["weights"] * batch["weight"][:, None])
    value, metrics = self._losses(params, sub, None)
    tokens = sub["weights"][:, 2:].sum()
    out = {name: v * tokens for name, v in dict(metrics, loss=value).items()}
    out["count"] = tokens
    return out

  def final_results(self, params, **unused):
    del unused
    head = params["head"]
    size = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))  # noqa: E731
    trainable = (size({k: head[k] for k in eda_lib().TRAINABLE_STAGE2})
                 if self.stage == 2 else size(head))
    out = {"model/params": size(head), "model/trainable_params": trainable,
           "model/trainable_fraction": trainable / size(head)}
    if self.selection:
      out.update({f"selection/{k}": v for k, v in self.selection.items()
                  if k != "indices"})
    return out


def eda_lib():
  from efficient.decoding.drafts import eda  # pylint: disable=g-import-not-at-top
  return eda
