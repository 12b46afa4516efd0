"""PARD: the training mask against an independent construction from the
inference pattern; COD keeps every kept row's prefix; the drafter's input
alignment and greedy losslessness."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient.decoding import lm, speculative
from efficient.decoding.drafts import pard

MASK = 99


def _inference_view(tokens, t, k):
  """What the k-th mask appended after x_t sees at inference, built from
  scratch: input [x_0..x_t, m_1..m_k] (positions 0..t+k), plain causal
  attention, the last row's (token, position) context and its target."""
  inputs = list(tokens[:t + 1]) + [MASK] * k
  context = sorted((tok, pos) for pos, tok in enumerate(inputs))
  return context, tokens[t + k + 1] if t + k + 1 < len(tokens) else None


@pytest.mark.parametrize("length,segments", [(7, 3), (5, 4)])
def test_training_rows_match_inference(length, segments):
  tokens = np.arange(100, 100 + length)
  ex = pard.training_example(tokens, segments, MASK)
  seg, pos = pard.layout(length, segments)
  supervised = 0
  for row in range(len(seg)):
    k, j = int(seg[row]), int(pos[row])
    seen = ex["mask"][row]
    context = sorted(zip(ex["inputs"][seen].tolist(),
                         ex["positions"][seen].tolist()))
    if not ex["weights"][row]:
      continue
    supervised += 1
    want_context, want_target = _inference_view(tokens.tolist(), j - k, k)
    assert context == want_context, (k, j)
    assert ex["labels"][row] == want_target, (k, j)
  # every (t, k) whose target exists is supervised exactly once
  want = sum(1 for k in range(segments) for t in range(-1, length)
             if t + k + 1 < length and t + k + 1 >= 1 and
             (k > 0 or t >= 0))
  assert supervised == want


def test_cod_sizes_and_prefix_integrity():
  rng = np.random.default_rng(0)
  length, segments = 40, 8
  for _ in range(20):
    rows = pard.cod_keep(rng, length, segments)
    assert len(rows) == pard.padded_length(length, segments)
    seg, pos = pard.layout(length, segments)
    full = pard.attention_mask(seg, pos)
    _, valid = pard.targets(np.arange(length), seg, pos)
    kept = np.zeros(len(seg), bool)
    kept[rows] = True
    for row in rows:
      if valid[row]:  # everything a supervised kept row reads is kept
        assert kept[full[row]].all(), (seg[row], pos[row])
  # 3.37·L rows instead of 8·L for K = 8, r = 0.7, r_min = 0.2 (int()
  # truncates 100·0.7² = 48.999… to 48, as the original's Python does)
  assert pard.padded_length(100, 8) == 100 + 70 + 48 + 34 + 24 + 20 + 20 + 20


def test_cod_example_is_the_full_example_restricted():
  tokens = np.arange(50, 62)
  full = pard.training_example(tokens, 4, MASK)
  rows = pard.cod_keep(np.random.default_rng(1), 12, 4)
  cod = pard.training_example(tokens, 4, MASK, np.random.default_rng(1))
  for key in ("inputs", "positions", "labels", "weights"):
    np.testing.assert_array_equal(cod[key], full[key][rows])
  np.testing.assert_array_equal(cod["mask"], full["mask"][np.ix_(rows, rows)])


@pytest.fixture(scope="module")
def target():
  config = lm.LlamaConfig(vocab_size=40, dim=32, n_layers=2, n_heads=2,
                          n_kv_heads=1, hidden_dim=64, init_std=0.3)
  model = lm.Llama.from_config(config)
  return model, model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))


def test_drafter_alignment_and_greedy_equality(target):
  """With the target itself as PARD draft, the first draft of each round
  (read at the last committed token) is the target's own greedy choice, so
  every round accepts at least one draft; an off-by-one in the draft's
  input window would break this. Output equals target greedy decoding."""
  model, params = target
  k = 3
  prompt, lengths = lm.pad_prompts([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10]], 6)
  want, want_n, _ = lm.decode(model, params, prompt, lengths,
                              jax.random.key(0), max_new=15)
  drafter = pard.PARDDrafter(model, mask_id=39, num_draft=k)
  seq, n, stats = speculative.speculative_decode(
      model, params, drafter, params, prompt, lengths, jax.random.key(0),
      num_draft=k, max_new=15)
  np.testing.assert_array_equal(n, want_n)
  for row in range(2):
    np.testing.assert_array_equal(seq[row, :n[row]], want[row, :n[row]])
  assert int(stats["accepted_hist"][0]) == 0
