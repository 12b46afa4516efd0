"""scripts/bench_peers.py: its JSON contract and table (no timing), its error
without the `bench` extra, and our SelfAttention against the Hugging Face
Nystromformer / YOSO-E self-attention layers for identical weights."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests import conftest

WIDTH, HEADS, HEAD_DIM = 256, 4, 64


def _run_script(*args, **kwargs):
  return subprocess.run(
      [sys.executable, *args], cwd=conftest.REPO,
      env=conftest.subprocess_env(devices=1), capture_output=True, text=True,
      check=False, **kwargs)


def test_without_the_bench_extra_names_the_install_command():
  # torch (and so transformers) made unimportable in the child.
  code = ("import runpy, sys; sys.modules['torch'] = None; "
          "sys.argv = ['scripts/bench_peers.py', '--lengths', '64']; "
          "runpy.run_path('scripts/bench_peers.py', run_name='__main__')")
  result = _run_script("-c", code, timeout=120)
  assert result.returncode == 1
  assert "bash scripts/install.sh bench" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bench_peers_writes_its_json_contract_and_table(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  out, png = tmp_path / "peers.json", tmp_path / "peers.png"
  result = _run_script("scripts/bench_peers.py", "--lengths", "128,256",
                       "--repeats", "1", "--out", str(out), "--plot",
                       str(png), timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  records = json.loads(out.read_text())
  assert {(r["impl"], r["method"], r["length"]) for r in records} == {
      (impl, method, n) for n in (128, 256)
      for impl, method in (("ours", "nystrom"), ("hf", "nystrom"),
                           ("ours", "yoso-e"), ("hf", "yoso-e"),
                           ("ours", "yoso-sampled"))}
  for r in records:
    assert r["time_ms"] > 0 and len(r["times_ms"]) == 1, r
    assert r["platform"] == "cpu" and r["cpu_cores"] >= 1
    assert r["torch"] and r["transformers"] and r["jax"]
    assert isinstance(r["hparams"], dict)
  by_key = {(r["impl"], r["method"], r["length"]): r for r in records}
  # The HF config defaults, the same on both sides.
  assert by_key["ours", "nystrom", 256]["hparams"] == {
      "attention": "nystrom", "value_conv_size": 65, "num_landmarks": 64}
  assert by_key["hf", "nystrom", 256]["hparams"] == {
      "num_landmarks": 64, "conv_kernel_size": 65,
      "segment_means_seq_len": 256}
  assert by_key["ours", "yoso-e", 128]["hparams"]["hash_bits"] == 9
  assert by_key["ours", "yoso-e", 128]["hparams"]["sampled"] is False
  assert by_key["hf", "yoso-e", 128]["hparams"]["hash_code_len"] == 9
  assert by_key["ours", "yoso-sampled", 128]["hparams"]["num_hashes"] == 64
  assert "| method | n | ours ms | HF ms | HF/ours (speed-up) |" in (
      result.stdout)
  for row in ("| nystrom | 256 |", "| yoso-e | 128 |",
              "| yoso-sampled (HF: yoso-e) | 256 |"):
    assert row in result.stdout
  assert png.stat().st_size > 1000


def _ours_and_hf(method, length, seed=0):
  """(our SelfAttention, its params, HF layer with the same weights, x)."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  import flax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from transformers.models.nystromformer import modeling_nystromformer  # pylint: disable=g-import-not-at-top
  from transformers.models.yoso import modeling_yoso  # pylint: disable=g-import-not-at-top
  from efficient.attention import encoder  # pylint: disable=g-import-not-at-top

  common = dict(hidden_size=WIDTH, num_attention_heads=HEADS,
                attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
  if method == "nystrom":
    # HF's init of the pseudo-inverse iteration is the original (global) one.
    config = modeling_nystromformer.NystromformerConfig(
        num_landmarks=64, conv_kernel_size=65, segment_means_seq_len=length,
        **common)
    assert config.inv_coeff_init_option is False
    layer = modeling_nystromformer.NystromformerSelfAttention(config)
    model = encoder.SelfAttention(
        HEADS, HEAD_DIM, "nystrom", flax.core.FrozenDict(
            num_landmarks=64, pinv_init="original"), value_conv_size=65)
  else:
    config = modeling_yoso.YosoConfig(use_expectation=True, hash_code_len=9,
                                      conv_window=None, **common)
    layer = modeling_yoso.YosoSelfAttention(config)
    model = encoder.SelfAttention(HEADS, HEAD_DIM, "yoso", flax.core.FrozenDict(
        sampled=False, hash_bits=9))
  layer.eval()
  x = jax.random.normal(jax.random.PRNGKey(seed), (2, length, WIDTH))
  mask = jnp.ones(x.shape[:2], bool)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed + 1), x,
                                    mask)["params"])
  # Ours -> HF. torch.nn.Linear: y = x Wᵀ + b with W [out, in] and the
  # output features laid out as (head, head_dim).
  with torch.no_grad():
    for name in ("query", "key", "value"):
      kernel = np.asarray(params[f"{name}_kernel"]).reshape(WIDTH, WIDTH)
      getattr(layer, name).weight.copy_(torch.tensor(kernel.T))
      getattr(layer, name).bias.copy_(torch.tensor(
          np.asarray(params[f"{name}_bias"]).reshape(WIDTH)))
    if method == "nystrom":  # Conv2d weight [heads, 1, k, 1]; ours [k, heads].
      kernel = np.asarray(params["value_conv"]["kernel"])
      layer.conv.weight.copy_(torch.tensor(kernel.T[:, None, :, None]))
  return model, params, layer, x, mask


def _hf_forward(layer, params, x, mask_for_hf):
  """HF context, then our output projection (HF's layer stops before it)."""
  import torch  # pylint: disable=g-import-not-at-top
  x_t = torch.tensor(np.asarray(x), requires_grad=True)
  context = layer(x_t, mask_for_hf)[0]  # [batch, n, heads·head_dim]
  out_kernel = torch.tensor(np.asarray(params["out_kernel"]).reshape(
      WIDTH, WIDTH))
  out = context @ out_kernel + torch.tensor(np.asarray(params["out_bias"]))
  return out, x_t


@pytest.mark.parametrize("method,length", [("nystrom", 256),
                                           ("yoso-e", 256)])
def test_our_layer_matches_hugging_face_for_the_same_weights(method, length):
  """Forward outputs and input gradients of sum(out · w), no padding.

  YOSO-E: both use the original approximate backward ((τ/2)·E in place of
  ∂E/∂(q·k)), so the input gradients agree as well. They agree to ~1e-6;
  the tolerance is tight enough that our per-matrix pinv init (off by
  ~1.4e-4 from HF's global one at batch 2) fails it.
  """
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model, params, layer, x, mask = _ours_and_hf(method, length)
  weights = np.cos(np.arange(WIDTH, dtype=np.float32))

  def loss(x):
    out = model.apply({"params": params}, x, mask)
    return jnp.sum(out * weights), out

  (_, ours), ours_grad = jax.value_and_grad(loss, has_aux=True)(x)
  hf_mask = None if method == "nystrom" else torch.ones(x.shape[:2])
  with torch.enable_grad():
    hf, x_t = _hf_forward(layer, params, x, hf_mask)
    (hf * torch.tensor(weights)).sum().backward()
  hf, hf_grad = hf.detach().numpy(), x_t.grad.numpy()
  ours, ours_grad = np.asarray(ours), np.asarray(ours_grad)
  assert np.all(np.isfinite(ours)) and np.abs(ours).max() > 0.1
  np.testing.assert_allclose(ours, hf, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours_grad, hf_grad, rtol=1e-5,
                             atol=1e-5 * np.abs(hf_grad).max())
