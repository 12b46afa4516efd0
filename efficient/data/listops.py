r"""ListOps, generated locally as Long Range Arena specifies it.

ListOps (Nangia & Bowman, 2018) asks for the value of a nested expression of
list operators over digits, e.g. `[MAX 2 9 [MIN 4 7 ] 0 ]` = 9. Long Range
Arena (Tay et al., 2021) made long versions of it; this module re-states its
generator (google-research/long-range-arena `lra_benchmarks/data/listops.py`)
exactly:

  * operators MIN, MAX, MED (median, truncated with int()), SM (sum mod 10);
    values 0-9; a node is a leaf with probability 1 - VALUE_P = 0.75 (always at
    max_depth), else an operator with randint(2, max_args) arguments; the
    arguments are drawn before the operator (RNG order matters for a seed);
  * length = number of tokens, an operator counting 2 (itself and `]`);
    a tree is kept iff min_length < length < max_length, duplicates dropped;
  * LRA: 96,000 / 2,000 / 2,000 examples, max depth 10, max args 10, lengths
    500-2000; 10 classes.

The original collects trees in a Python set, so its split depends on
PYTHONHASHSEED and cannot be reproduced; here trees are de-duplicated in
first-seen order from one seeded stream (train, then validation, then test),
so a seed gives byte-identical data.

Tokenisation keeps the closing bracket `]` as a token (S4's convention and
LRA's fix, commit c209b2a4): LRA's original pipeline dropped every
non-alphanumeric character, and without `]` the input no longer determines the
label: `[MAX 1 [MIN 2 3 ] 4 ]` (= 4) and `[MAX 1 [MIN 2 3 4 ] ]` (= 2) both
become `MAX 1 MIN 2 3 4`. Vocabulary: 0 = padding, the four operators, ten
digits, `]` (16 ids). The token count equals the spec's length.

Build (progress bars while drawing trees and writing):

  python -m efficient.data.listops --config=lra [--data_dir=DIR]

Drawing LRA's 100k trees takes one Python thread 5-30 minutes. To build
the same dataset on a machine with little time (a lent GPU), export the
expressions once (50 MB: 4-bit tokens, xz) and build from the file (decoded
by one process per core); the labels and source strings are recomputed
from the tokens, so the result is the drawn dataset, example for example:

  python -m efficient.data.listops --config=lra --export=listops_lra.npz.xz
  python -m efficient.data.listops --config=lra --from_file=listops_lra.npz.xz
"""
import argparse
import dataclasses
import io
import lzma
import multiprocessing
import os
import random

import numpy as np
import tensorflow_datasets as tfds
import tqdm

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
VALUES = tuple(range(10))
VALUE_P = 0.25
END = "]"

VOCAB = ("<pad>",) + OPERATORS + tuple(str(v) for v in VALUES) + (END,)
VOCAB_SIZE = len(VOCAB)
_IDS = {token: i for i, token in enumerate(VOCAB)}


def generate_tree(rng, depth=1, max_depth=10, max_args=10):
  """Draws one tree exactly as LRA's generator does; returns (tree, length).

  A tree is a digit or a left-nested tuple `((((op, a0), a1), ...), "]")`.
  """
  r = rng.random() if depth < max_depth else 1
  if r > VALUE_P:
    return rng.choice(VALUES), 1
  num_values = rng.randint(2, max_args)
  children = [generate_tree(rng, depth + 1, max_depth, max_args)
              for _ in range(num_values)]
  op = rng.choice(OPERATORS)  # Drawn after the children, as in LRA.
  tree, length = op, 2
  for child, child_length in children:
    tree = (tree, child)
    length += child_length
  return (tree, END), length


def to_string(tree):
  """LRA's string form, e.g. `( ( ( [MAX 2 ) 9 ) ] )`."""
  if isinstance(tree, tuple):
    return f"( {to_string(tree[0])} {to_string(tree[1])} )"
  return str(tree)


def _apply(op, args):
  if op == "[MIN":
    return min(args)
  if op == "[MAX":
    return max(args)
  if op == "[MED":  # int(np.median(args)), without numpy's overhead.
    ordered, half = sorted(args), len(args) // 2
    if len(args) % 2:
      return ordered[half]
    return int((ordered[half - 1] + ordered[half]) / 2)
  return sum(args) % 10  # [SM


def to_value(tree):
  """The label: the expression's value (0-9)."""
  if not isinstance(tree, tuple):
    return tree
  node, args = tree[0], []  # Unwind ((op, a0), a1)... to op and [a0, a1, ...].
  while isinstance(node, tuple):
    args.append(to_value(node[1]))
    node = node[0]
  return _apply(node, args[::-1])


def generate_expressions(num, *, min_length, max_length, max_depth=10,
                         max_args=10, seed=0, progress=True):
  """Draws `num` distinct expressions with min_length < length < max_length.

  Returns:
    A list of (expression string, label) in first-drawn order.
  """
  rng = random.Random(seed)
  seen, out = set(), []
  with tqdm.tqdm(total=num, desc="ListOps trees", unit="tree",
                 disable=not progress, mininterval=1.0) as bar:
    while len(out) < num:
      tree, length = generate_tree(rng, 1, max_depth, max_args)
      if not min_length < length < max_length:
        continue
      text = to_string(tree)
      if text in seen:
        continue
      seen.add(text)
      out.append((text, to_value(tree)))
      bar.update(1)
  return out


def draw(config):
  """All of a config's expressions, train then validation then test."""
  c = config
  return generate_expressions(
      c.num_train + c.num_validation + c.num_test, min_length=c.min_length,
      max_length=c.max_length, max_depth=c.max_depth, max_args=c.max_args,
      seed=c.seed)


def tokenize(expression):
  """Expression string -> int32 ids (parentheses dropped, `]` kept)."""
  return np.array([_IDS[t] for t in expression.split() if t not in "()"],
                  np.int32)


def detokenize(ids):
  return " ".join(VOCAB[i] for i in ids if i != 0)


def from_tokens(ids):
  """Token ids → (LRA string form, label): `to_string` and `to_value` of the
  tree that `tokenize` flattened, in one pass over the tokens (an operator
  opens a node, `]` closes it) without building the tree."""
  stack = [[None, [], []]]  # Per open node: operator, argument strings, values.
  for token in (VOCAB[i] for i in np.asarray(ids).tolist()):
    if token in OPERATORS:
      stack.append([token, [], []])
    elif token == END:
      op, strings, values = stack.pop()
      stack[-1][1].append("( " * (len(strings) + 1) + op + " " +
                          " ) ".join(strings) + " ) ] )")
      stack[-1][2].append(_apply(op, values))
    else:
      stack[-1][1].append(token)
      stack[-1][2].append(int(token))
  if len(stack) != 1 or len(stack[0][1]) != 1:
    raise ValueError("not one complete expression")
  return stack[0][1][0], stack[0][2][0]


def save_expressions(token_lists, path):
  """Writes token sequences as 4-bit codes + lengths, xz-compressed."""
  lengths = np.array([len(t) for t in token_lists], np.uint16)
  flat = np.concatenate(token_lists).astype(np.uint8)
  flat = np.pad(flat, (0, len(flat) % 2))
  buffer = io.BytesIO()
  np.savez(buffer, lengths=lengths, packed=(flat[0::2] << 4) | flat[1::2])
  with lzma.open(path, "wb") as f:
    f.write(buffer.getvalue())


def load_expressions(path, processes=None):
  """(expression string, label) pairs from `save_expressions`' file, decoded
  by `processes` worker processes (default: one per CPU)."""
  with lzma.open(path, "rb") as f:
    data = np.load(io.BytesIO(f.read()))
  packed, lengths = data["packed"], data["lengths"].astype(np.int64)
  flat = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)
  ends = np.cumsum(lengths)
  pieces = [flat[start:end] for start, end in zip(ends - lengths, ends)]
  processes = processes or os.cpu_count() or 1
  if processes == 1 or len(pieces) < 1000:
    return [from_tokens(piece) for piece in pieces]
  with multiprocessing.get_context("fork").Pool(processes) as pool:
    return pool.map(from_tokens, pieces, chunksize=500)


@dataclasses.dataclass
class ListOpsConfig(tfds.core.BuilderConfig):
  """Sizes and generator parameters of one ListOps variant."""
  num_train: int = 96_000
  num_validation: int = 2_000
  num_test: int = 2_000
  min_length: int = 500
  max_length: int = 2000
  max_depth: int = 10
  max_args: int = 10
  seed: int = 0


class ListOps(tfds.core.GeneratorBasedBuilder):
  """LRA ListOps; configs `lra` (the benchmark), `lra_heldout`, `quick`, `smoke`.

  `expressions_file` (set before `download_and_prepare`): build from
  `save_expressions`' file instead of drawing the trees.
  """

  expressions_file = None

  name = "listops"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      ListOpsConfig(name="lra", description="LRA ListOps: 96k/2k/2k, "
                    "lengths 500-2000."),
      # A second draw of LRA's distribution (seed 1), to tell a model's
      # accuracy from the luck of the 2,000-example test split: evaluate
      # trained weights on its 10,000 test examples (README: "Evaluate").
      ListOpsConfig(name="lra_heldout", description="LRA ListOps drawn "
                    "again (seed 1): 32/32/10k, lengths 500-2000.",
                    num_train=32, num_validation=32, num_test=10_000, seed=1),
      # Short expressions: a 2-layer model learns them in minutes on a CPU.
      ListOpsConfig(name="quick", description="Lengths 20-256, 20k/1k/1k.",
                    num_train=20_000, num_validation=1_000, num_test=1_000,
                    min_length=20, max_length=256),
      ListOpsConfig(name="smoke", description="Tiny, for tests.",
                    num_train=200, num_validation=50, num_test=50,
                    min_length=10, max_length=128),
  ]
  DEFAULT_CONFIG_NAME = "lra"

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "label": tfds.features.ClassLabel(num_classes=10),
            "source": tfds.features.Text(),
        }),
        supervised_keys=("tokens", "label"),
        homepage="https://github.com/google-research/long-range-arena",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data is generated.
    c = self.builder_config
    sizes = {"train": c.num_train, "validation": c.num_validation,
             "test": c.num_test}
    if self.expressions_file:
      expressions = load_expressions(self.expressions_file)
      if len(expressions) != sum(sizes.values()):
        raise ValueError(f"{self.expressions_file} holds {len(expressions)} "
                         f"expressions; config {c.name} needs "
                         f"{sum(sizes.values())}")
    else:
      expressions = draw(c)
    splits, start = {}, 0
    for name, size in sizes.items():
      splits[name] = self._generate_examples(expressions[start:start + size])
      start += size
    return splits

  def _generate_examples(self, expressions):
    for i, (text, label) in enumerate(expressions):
      yield i, {"tokens": tokenize(text), "label": label, "source": text}


def build(config="lra", data_dir=None, expressions_file=None):
  """Builds (if needed) and returns the array_record ListOps builder."""
  builder = ListOps(config=config, data_dir=data_dir,
                    file_format="array_record")
  builder.expressions_file = expressions_file
  builder.download_and_prepare()
  return builder


def export(config, path):
  """Draws a config's expressions (train, validation, test, in the order
  the builder assigns them) and writes them with `save_expressions`.

  Drawn anew rather than read from a built dataset: tfds stores examples in
  the hashed order of their keys, not in the order they were drawn.
  """
  save_expressions([tokenize(text) for text, _ in draw(config)], path)


def describe(builder):
  """Per split: size, token-length min/median/max and label counts."""
  out = {}
  for split in ("train", "validation", "test"):
    source = builder.as_data_source(split=split)
    lengths = np.array([len(source[i]["tokens"]) for i in range(len(source))])
    labels = np.bincount([int(source[i]["label"]) for i in range(len(source))],
                         minlength=10)
    out[split] = {"num_examples": len(source), "length_min": int(lengths.min()),
                  "length_median": float(np.median(lengths)),
                  "length_max": int(lengths.max()),
                  "label_counts": labels.tolist()}
  return out


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="Builds ListOps with tfds.")
  parser.add_argument("--config", default="lra",
                      choices=[c.name for c in ListOps.BUILDER_CONFIGS])
  parser.add_argument("--data_dir", default=None,
                      help="default: $TFDS_DATA_DIR or ~/tensorflow_datasets")
  parser.add_argument("--export", default=None,
                      help="draw the config's expressions (all splits, in "
                      "order), write them to this file, and stop")
  parser.add_argument("--from_file", default=None,
                      help="build from an --export file instead of drawing")
  args = parser.parse_args()
  if args.export:
    export(ListOps.builder_configs[args.config], args.export)
    print(f"wrote {args.export}")
    raise SystemExit(0)
  built = build(args.config, args.data_dir, args.from_file)
  print(f"built in {built.data_dir}")
  for split_name, stats in describe(built).items():
    print(split_name, stats)
