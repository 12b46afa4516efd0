"""ListOps generator, tokeniser and tfds builder against independent checks."""
import pathlib
import random
import statistics

import numpy as np
import pytest

from efficient.data import listops
from efficient.data import pipeline


def evaluate_tokens(tokens):
  """Independent stack evaluator over the bracket-kept token string."""
  stack = []
  for token in tokens:
    if token.startswith("["):
      stack.append([token])
    elif token == "]":
      op, *args = stack.pop()
      if op == "[MIN":
        value = min(args)
      elif op == "[MAX":
        value = max(args)
      elif op == "[SM":
        value = sum(args) % 10
      else:  # [MED: the middle value, or the truncated mean of the two.
        ordered, n = sorted(args), len(args)
        value = (ordered[n // 2] if n % 2 else
                 int((ordered[n // 2 - 1] + ordered[n // 2]) / 2))
      if not stack:
        return value
      stack[-1].append(value)
    else:
      if not stack:  # A bare digit is a whole expression.
        return int(token)
      stack[-1].append(int(token))
  raise ValueError(f"unbalanced expression: {tokens}")


def _records(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def smoke(listops_data_dir):
  return listops.ListOps(config="smoke", data_dir=listops_data_dir,
                         file_format="array_record")


def test_every_expression_parses_and_label_matches_independent_evaluator(
    smoke):
  config = smoke.builder_config
  seen = set()
  for split, size in (("train", config.num_train),
                      ("validation", config.num_validation),
                      ("test", config.num_test)):
    records = _records(smoke, split)
    assert len(records) == size
    for record in records:
      text = record["source"].decode()
      tokens = listops.detokenize(record["tokens"]).split()
      assert tokens == [t for t in text.split() if t not in "()"]
      assert evaluate_tokens(tokens) == int(record["label"]), text
      # The spec's length (op = 2, value = 1) is the token count.
      assert config.min_length < len(tokens) < config.max_length
      assert text not in seen  # No duplicates within or across splits.
      seen.add(text)


def test_same_seed_gives_byte_identical_data(tmp_path):
  config = listops.ListOpsConfig(name="tiny", num_train=40, num_validation=5,
                                 num_test=5, min_length=5, max_length=60,
                                 seed=3)
  files = []
  for run in ("a", "b"):
    listops.build(config, data_dir=str(tmp_path / run))
    files.append({p.name: p.read_bytes() for p in sorted(
        (tmp_path / run).rglob("*.array_record*"))})
  assert files[0] and files[0] == files[1]
  other = listops.generate_expressions(10, min_length=5, max_length=60,
                                       seed=4, progress=False)
  same = listops.generate_expressions(10, min_length=5, max_length=60, seed=3,
                                      progress=False)
  assert other != same


def test_export_then_build_from_file_gives_the_same_files(tmp_path):
  config = listops.ListOpsConfig(name="tiny", num_train=40, num_validation=5,
                                 num_test=5, min_length=5, max_length=60,
                                 seed=3)
  drawn = listops.build(config, data_dir=str(tmp_path / "drawn"))
  path = tmp_path / "tiny.npz.xz"
  listops.export(config, path)
  listops.build(config, data_dir=str(tmp_path / "file"),
                expressions_file=str(path))
  files = [{p.name: p.read_bytes() for p in sorted(
      (tmp_path / run).rglob("*.array_record*"))} for run in ("drawn", "file")]
  assert files[0] and files[0] == files[1]
  with pytest.raises(ValueError, match="holds 50 expressions"):
    listops.build(listops.ListOpsConfig(name="tiny2", num_train=41,
                                        num_validation=5, num_test=5),
                  data_dir=str(tmp_path / "bad"), expressions_file=str(path))


def test_load_expressions_in_worker_processes_keeps_the_order(tmp_path):
  drawn = listops.generate_expressions(1200, min_length=5, max_length=40,
                                       seed=1, progress=False)
  path = tmp_path / "e.npz.xz"
  listops.save_expressions([listops.tokenize(t) for t, _ in drawn], path)
  assert listops.load_expressions(path, processes=2) == drawn


def test_from_tokens_gives_the_string_form_and_value_of_the_tree():
  rng = random.Random(0)
  for _ in range(300):
    tree, _ = listops.generate_tree(rng, max_depth=6, max_args=5)
    assert listops.from_tokens(listops.tokenize(listops.to_string(tree))) == (
        listops.to_string(tree), listops.to_value(tree))
  for bad in ("[MAX 1 2 ] 3", "[MAX 1 2"):
    with pytest.raises(ValueError, match="one complete"):
      listops.from_tokens(listops.tokenize(bad))


def test_generate_tree_draws_children_before_the_operator():
  # Re-simulate the generator's draws by hand for a seed whose root is an op.
  seed = next(s for s in range(100)
              if random.Random(s).random() <= listops.VALUE_P)
  tree, length = listops.generate_tree(random.Random(seed), 1, 2, 3)
  rng = random.Random(seed)
  assert rng.random() <= listops.VALUE_P     # Root: an operator.
  num = rng.randint(2, 3)
  children = [rng.choice(listops.VALUES) for _ in range(num)]  # Depth 2 = max.
  op = rng.choice(listops.OPERATORS)          # Drawn after the children.
  expected = op
  for child in children:
    expected = (expected, child)
  assert tree == (expected, "]") and length == num + 2
  # At max_depth a node is always a leaf.
  leaf, leaf_length = listops.generate_tree(random.Random(0), 1, 1, 10)
  assert leaf in listops.VALUES and leaf_length == 1


def test_string_form_and_value_follow_lra():
  tree = (((("[MAX", 2), 9), "]"))
  assert listops.to_string(tree) == "( ( ( [MAX 2 ) 9 ) ] )"
  assert listops.to_value(tree) == 9
  med = ((((("[MED", 1), 2), 7), 9), "]")
  assert listops.to_value(med) == int(np.median([1, 2, 7, 9])) == 4


def test_tokenizer_round_trip_and_why_the_closing_bracket_stays():
  assert listops.VOCAB_SIZE == 16 and listops.VOCAB[0] == "<pad>"
  text = "( ( ( ( [MAX 1 ) ( ( ( [MIN 2 ) 3 ) ] ) ) 4 ) ] )"
  ids = listops.tokenize(text)
  assert listops.detokenize(ids) == "[MAX 1 [MIN 2 3 ] 4 ]"
  # Without "]" these two differ in label but read the same (LRA's bug).
  a = "[MAX 1 [MIN 2 3 ] 4 ]".split()
  b = "[MAX 1 [MIN 2 3 4 ] ]".split()
  assert evaluate_tokens(a) == 4 and evaluate_tokens(b) == 2
  strip = lambda tokens: [t.strip("[") for t in tokens if t != "]"]
  assert strip(a) == strip(b)


def test_lra_config_matches_the_spec():
  config = next(c for c in listops.ListOps.BUILDER_CONFIGS if c.name == "lra")
  assert (config.num_train, config.num_validation, config.num_test) == (
      96_000, 2_000, 2_000)
  assert (config.min_length, config.max_length, config.max_depth,
          config.max_args) == (500, 2000, 10, 10)
  sample = listops.generate_expressions(
      40, min_length=500, max_length=2000, seed=0, progress=False)
  lengths = [len(listops.tokenize(text)) for text, _ in sample]
  assert 500 < min(lengths) and max(lengths) < 2000
  assert 700 < statistics.median(lengths) < 1400


def test_heldout_config_is_lra_drawn_again_with_another_seed():
  configs = {c.name: c for c in listops.ListOps.BUILDER_CONFIGS}
  lra, heldout = configs["lra"], configs["lra_heldout"]
  generator = lambda c: (c.min_length, c.max_length, c.max_depth, c.max_args)
  assert generator(heldout) == generator(lra)
  assert heldout.seed != lra.seed and heldout.num_test == 10_000
  draw = lambda seed: listops.generate_expressions(
      5, min_length=500, max_length=2000, seed=seed, progress=False)
  assert not {t for t, _ in draw(heldout.seed)} & {t for t, _ in draw(lra.seed)}


def test_pipeline_pads_batches_and_eval_covers_every_example_once(smoke):
  source = smoke.as_data_source(split="validation")
  batches = list(pipeline.eval_batches(source, global_batch_size=8,
                                       transform=pipeline.PadTokens(128)))
  weights = np.concatenate([b["weight"] for b in batches])
  assert weights.sum() == len(source) == 50
  labels = np.concatenate([b["label"] for b in batches])[weights > 0]
  assert sorted(labels.tolist()) == sorted(int(source[i]["label"])
                                           for i in range(len(source)))
  it = pipeline.train_iterator(smoke.as_data_source(split="train"),
                               global_batch_size=8,
                               transform=pipeline.PadTokens(128), seed=0)
  first = next(it)
  assert first["tokens"].shape == (8, 128) and first["label"].shape == (8,)
  state = it.get_state()
  expected = next(it)
  it2 = pipeline.train_iterator(smoke.as_data_source(split="train"),
                                global_batch_size=8,
                                transform=pipeline.PadTokens(128), seed=0)
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)["tokens"], expected["tokens"])


def test_train_iterator_over_a_subset_draws_only_its_rows(smoke):
  source = smoke.as_data_source(split="train")
  keep = [3, 17, 42, 60, 91]
  pad = pipeline.PadTokens(128)
  allowed = {pad.map(source[i])["tokens"].tobytes() for i in keep}
  it = pipeline.train_iterator(pipeline.Subset(source, keep),
                               global_batch_size=8, transform=pad, seed=0)
  drawn = {row.tobytes() for _ in range(3) for row in next(it)["tokens"]}
  assert drawn == allowed  # 24 draws over 5 rows: every one, nothing else


def test_missing_data_dir_is_a_config_error(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from efficient.errors import ConfigError  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(
      name="listops", builder_config="smoke", prepare=False, max_length=128,
      data_dir=str(tmp_path / "nowhere")))
  with pytest.raises(ConfigError, match="nowhere"):
    pipeline.load_builder(cfg)
  cfg.data_dir = str(tmp_path)
  with pytest.raises(ConfigError, match="not built"):
    pipeline.load_builder(cfg)
  assert not list(pathlib.Path(tmp_path).iterdir())
