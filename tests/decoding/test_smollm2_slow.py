"""On the real SmolLM2-135M (needs `bash scripts/install.sh spec`; `slow`):
speculative greedy decoding equals plain greedy decoding token for token,
where float32 differences between a (K+1)-token verify forward and 1-token
decoding could flip near-tied argmaxes (EAGLE issue #79)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient.decoding import lm, speculative
from efficient.decoding.drafts import ar, pard

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target():
  from efficient.decoding import gguf, targets  # pylint: disable=g-import-not-at-top
  try:
    gguf.smollm2_path()  # found without importing the wheel (llama_cpp)
  except FileNotFoundError as e:
    pytest.skip(str(e))
  t = targets.load("smollm2")
  texts = ["The capital of France is",
           gguf.chat_prompt("Write a haiku about the sea."),
           "def quicksort(items):\n    "]
  return t, [t.encode(x) for x in texts]


def test_speculative_greedy_equals_plain_on_smollm2(target):
  t, prompts = target
  small = lm.Llama.from_config(lm.LlamaConfig(
      vocab_size=49152, dim=64, n_layers=1, n_heads=2, n_kv_heads=1,
      hidden_dim=128, init_std=0.02))
  small_params = small.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
  drafters = [(ar.ARDrafter(small), small_params, 3),  # mostly rejected
              (pard.PARDDrafter(t.model, t.mask_id, 4), t.params, 4)]
  for ids in prompts:
    prompt, lengths = lm.pad_prompts([ids], len(ids))
    want, want_n, _ = lm.decode(t.model, t.params, prompt, lengths,
                                jax.random.key(0), max_new=40)
    for drafter, params, k in drafters:
      seq, n, stats = speculative.speculative_decode(
          t.model, t.params, drafter, params, prompt, lengths,
          jax.random.key(0), num_draft=k, max_new=40)
      assert int(n[0]) == int(want_n[0])
      np.testing.assert_array_equal(seq[0, :n[0]], want[0, :n[0]])
      assert int(stats["rounds"][0]) <= 40
