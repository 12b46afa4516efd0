r"""Text for training and evaluating draft models, from files every Python
install has (no download), tokenized with the target's tokenizer.

Corpora (reference/draft.md §10.2):
  * "prose": English documentation -- every module/class/function docstring
    of the standard library (`ast.get_docstring`) and the Python reference
    topics of `pydoc_data.topics`;
  * "python": standard-library source code with docstrings removed
    (`ast.unparse` after deleting them; comments go with it).
Files are split by a hash of their path (90 / 5 / 5 % train / validation /
test), so evaluation prompts come from modules the draft never saw. Test and
`pydoc` files under `test/`, `idle_test/`, `site-packages` are skipped.

Each document is tokenized and ended with the target's eos; a split's
documents are concatenated and cut into `seq_len`-token chunks. A raw config
stores the chunks. A `regen` config keeps only each chunk's first
`prompt_len` tokens and lets the target write the rest (sampling with
`temperature`/`top_p`): "data regeneration", training the draft on what the
target actually generates (EDA, arXiv 2603.09527; Medusa-2's
self-distillation). `weights` marks the positions that count (0 after a
generated eos). The test split is always raw: its chunk starts are the
held-out prompts of experiments/spec_decode.

Build (progress bars; regen configs run the target, minutes to hours):

  python -m efficient.data.draft_text --config=prose_regen [--data_dir=DIR]
"""
import argparse
import ast
import dataclasses
import hashlib
import os
import sysconfig

import jax
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from efficient.errors import ConfigError

# Regenerated batches committed to the repository (SmolLM2's continuations
# take about half an hour on a 2-core CPU): a build finds them here before
# running the target. Same file names as the data dir's cache.
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
COMMITTED_CACHE = os.path.join(_REPO, "experiments", "spec_decode",
                               "regen_cache")

SKIP_DIRS = ("test", "tests", "idle_test", "site-packages", "dist-packages",
             "__pycache__")


def stdlib_files():
  """Sorted paths (relative, absolute) of the standard library's .py files."""
  root = sysconfig.get_paths()["stdlib"]
  out = []
  for directory, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        out.append((os.path.relpath(path, root), path))
  return out


def _parse(path):
  try:
    with open(path, encoding="utf-8") as f:
      return ast.parse(f.read())
  except (SyntaxError, UnicodeDecodeError, ValueError):
    return None


_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def prose_documents():
  """(key, text): docstrings per stdlib file, then pydoc reference topics."""
  for rel, path in stdlib_files():
    tree = _parse(path)
    if tree is None:
      continue
    docs = [ast.get_docstring(node) for node in ast.walk(tree)
            if isinstance(node, _DOC_NODES)]
    docs = [d for d in docs if d and len(d) > 40]
    if docs:
      yield rel, "\n\n".join(docs)
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  for name in sorted(topics.topics):
    yield f"pydoc_data/{name}", topics.topics[name]


def python_documents():
  """(key, source without docstrings) per stdlib file."""
  for rel, path in stdlib_files():
    tree = _parse(path)
    if tree is None:
      continue
    for node in ast.walk(tree):
      if isinstance(node, _DOC_NODES) and node.body and isinstance(
          node.body[0], ast.Expr) and isinstance(
              getattr(node.body[0], "value", None), ast.Constant) and \
          isinstance(node.body[0].value.value, str):
        node.body = node.body[1:] or [ast.Pass()]
    try:
      yield rel, ast.unparse(tree)
    except (ValueError, RecursionError):
      continue


CORPORA = {"prose": prose_documents, "python": python_documents}


def split_of(key):
  bucket = int(hashlib.md5(key.encode()).hexdigest(), 16) % 100
  return "train" if bucket < 90 else ("validation" if bucket < 95 else "test")


def chunks(documents, encode, eos_id, seq_len, limit_tokens=None):
  """Concatenate tokenized documents (each + eos), cut into seq_len pieces."""
  ids = []
  for text in documents:
    ids.extend(encode(text))
    ids.append(eos_id)
    if limit_tokens and len(ids) >= limit_tokens:
      break
  n = len(ids) // seq_len
  return np.asarray(ids[:n * seq_len], np.int32).reshape(n, seq_len)


def target_key(target):
  """The target's part of the cache key: its name, and for a trained run
  ("run:<workdir>", e.g. the Python-tuned SmolLM2) an md5 digest of its
  weights too, so a retrained run never reuses another run's text (the
  GGUF SmolLM2 and the tiny target are fixed by their name)."""
  if not target.name.startswith("run:"):
    return target.name
  digest = hashlib.md5()
  for leaf in jax.tree.leaves(target.params):
    digest.update(np.asarray(leaf, np.float32).tobytes())
  return f"{target.name}@{digest.hexdigest()[:16]}"


def regenerate(target, prompts, new_tokens, *, temperature, top_p, seed,
               batch_size, cache_dir=None, read_only_cache_dirs=()):
  """The target's continuations of prompts [N, P]: tokens [N, P + new],
  weights [N, P + new] (0 after the first generated eos).

  With `cache_dir`, every finished batch is saved there (compressed npz)
  and reused, so an interrupted build (hours for SmolLM2 on a CPU) resumes
  where it stopped; a batch is reused only if its prompts and settings
  match (the file name holds their hash; for a trained run the settings
  include a digest of its weights, `target_key`). `read_only_cache_dirs`
  are searched too, never written: the committed copy (`COMMITTED_CACHE`).
  """
  from efficient.decoding import lm  # pylint: disable=g-import-not-at-top
  sampling = lm.Sampling(temperature=temperature, top_p=top_p)
  n, p = prompts.shape
  tokens = np.zeros((n, p + new_tokens), np.int32)
  weights = np.zeros((n, p + new_tokens), np.float32)
  settings = f"{target_key(target)}|{temperature}|{top_p}|{seed}|{new_tokens}"
  if cache_dir:
    os.makedirs(cache_dir, exist_ok=True)
  for start in tqdm.trange(0, n, batch_size, desc="regenerate", unit="batch"):
    block = prompts[start:start + batch_size]
    rows = len(block)
    key = hashlib.md5(settings.encode() + block.tobytes()).hexdigest()[:16]
    name = f"{start:07d}_{key}.npz"
    path = cache_dir and os.path.join(cache_dir, name)
    cached_path = next((os.path.join(d, name) for d in [cache_dir,
                                                         *read_only_cache_dirs]
                        if d and os.path.exists(os.path.join(d, name))), None)
    if cached_path:
      with np.load(cached_path) as cached:
        tokens[start:start + rows] = cached["tokens"]
        weights[start:start + rows] = cached["weights"]
      continue
    block = np.concatenate([block, np.repeat(block[-1:], batch_size - rows,
                                             0)])
    seq, length, _ = lm.decode(
        target.model, target.params, block, np.full(batch_size, p, np.int32),
        jax.random.fold_in(jax.random.key(seed), start), max_new=new_tokens,
        sampling=sampling, eos_id=target.eos_id)
    seq, length = np.asarray(seq)[:rows], np.asarray(length)[:rows]
    tokens[start:start + rows] = seq[:, :p + new_tokens]
    weights[start:start + rows] = (np.arange(p + new_tokens)[None]
                                   < length[:, None])
    if path:
      np.savez_compressed(path + ".tmp.npz",
                          tokens=tokens[start:start + rows],
                          weights=weights[start:start + rows])
      os.replace(path + ".tmp.npz", path)
  tokens = np.where(weights > 0, tokens, target.eos_id)
  return tokens, weights


@dataclasses.dataclass
class DraftTextConfig(tfds.core.BuilderConfig):
  corpus: str = "prose"
  target: str = "smollm2"  # efficient.decoding.targets
  regen: bool = False
  seq_len: int = 128
  prompt_len: int = 32
  num_train: int | None = None  # chunks kept (None: all)
  num_validation: int = 256
  num_test: int = 256
  temperature: float = 0.7
  top_p: float = 0.95
  batch_size: int = 32
  seed: int = 0
  limit_tokens: int | None = None  # per split, before chunking (smoke)


class DraftText(tfds.core.GeneratorBasedBuilder):
  """Docs / Python source chunks, raw or regenerated by the target."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      DraftTextConfig(name="prose", description="stdlib docstrings + pydoc "
                      "topics, SmolLM2 tokens, raw."),
      DraftTextConfig(name="prose_regen", regen=True, num_train=2048,
                      description="prose prompts, SmolLM2 continuations."),
      DraftTextConfig(name="python", corpus="python",
                      description="stdlib source, SmolLM2 tokens, raw."),
      DraftTextConfig(name="python_regen", corpus="python", regen=True,
                      num_train=1024, target="run:runs/target_python",
                      description="Python prompts, continuations by SmolLM2 "
                      "fine-tuned on Python (configs/draft.py:target_python;"
                      " build from the repo root)."),
      DraftTextConfig(name="smoke", target="tiny", seq_len=32, prompt_len=8,
                      num_train=64, num_validation=16, num_test=16,
                      limit_tokens=8192, description="tests: bytes, raw."),
      DraftTextConfig(name="smoke_regen", target="tiny", regen=True,
                      seq_len=32, prompt_len=8, num_train=64,
                      num_validation=16, num_test=16, limit_tokens=8192,
                      batch_size=32, description="tests: tiny target regen."),
  ]
  DEFAULT_CONFIG_NAME = "prose_regen"

  def _info(self):
    c = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Tensor(shape=(c.seq_len,),
                                           dtype=np.int32),
            "weights": tfds.features.Tensor(shape=(c.seq_len,),
                                            dtype=np.float32),
            "prompt_len": np.int32,
        }))

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    from efficient.decoding import targets  # pylint: disable=g-import-not-at-top
    c = self.builder_config
    try:
      target = targets.load(c.target)
    except FileNotFoundError as e:
      raise ConfigError(str(e)) from None
    docs = {"train": [], "validation": [], "test": []}
    for key, text in CORPORA[c.corpus]():
      docs[split_of(key)].append(text)
    keep = {"train": c.num_train, "validation": c.num_validation,
            "test": c.num_test}
    out = {}
    for split, texts in docs.items():
      pieces = chunks(texts, target.encode, target.eos_id, c.seq_len,
                      c.limit_tokens)
      order = np.random.default_rng(c.seed).permutation(len(pieces))
      pieces = pieces[order[:keep[split]]]
      weights = np.ones(pieces.shape, np.float32)
      if c.regen and split != "test":
        pieces, weights = regenerate(
            target, pieces[:, :c.prompt_len], c.seq_len - c.prompt_len,
            temperature=c.temperature, top_p=c.top_p,
            seed=c.seed + {"train": 0, "validation": 1}[split],
            batch_size=c.batch_size,
            cache_dir=os.path.join(self.data_dir_root, "draft_text_cache",
                                   c.name, split),
            read_only_cache_dirs=[os.path.join(COMMITTED_CACHE, c.name,
                                               split)])
      out[split] = self._generate_examples(pieces, weights, c.prompt_len)
    return out

  def _generate_examples(self, pieces, weights, prompt_len):
    for i, (tokens, w) in enumerate(zip(pieces, weights)):
      yield i, {"tokens": tokens, "weights": w,
                "prompt_len": np.int32(prompt_len)}


def build(config="prose_regen", data_dir=None):
  builder = DraftText(config=config, data_dir=data_dir,
                      file_format="array_record")
  builder.download_and_prepare()
  return builder


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="Builds draft_text (tfds).")
  parser.add_argument("--config", default="prose_regen",
                      choices=[c.name for c in DraftText.BUILDER_CONFIGS])
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args()
  built = build(args.config, args.data_dir)
  for split in ("train", "validation", "test"):
    print(split, len(built.as_data_source(split=split)))
