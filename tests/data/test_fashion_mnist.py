"""Fashion-MNIST builder on small idx files written by the test."""
import json

import numpy as np
import pytest

from efficient.data import fashion_mnist
from efficient.data import pipeline
from efficient.errors import ConfigError
from tests import conftest


@pytest.fixture(scope="module")
def fake_source(tmp_path_factory):
  """5,300 training and 100 test images in the Debian package's layout."""
  directory = tmp_path_factory.mktemp("fashion_idx")
  rng = np.random.default_rng(0)
  data = {}
  for split, n in (("train", 5300), ("t10k", 100)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, :4] = 0  # Black rows, as Fashion-MNIST backgrounds are.
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    conftest.write_fashion_idx(directory, split, images, labels)
    data[split] = (images, labels)
  return directory, data


def test_builder_splits_follow_the_idx_files(fake_source, tmp_path,
                                             monkeypatch):
  directory, data = fake_source
  monkeypatch.setenv("FASHION_MNIST_DIR", str(directory))
  builder = fashion_mnist.build("smoke", data_dir=str(tmp_path))
  train_images, train_labels = data["train"]
  expected = {"train": (train_images[:300], train_labels[:300], 256),
              "validation": (train_images[300:], train_labels[300:], 64),
              "test": (*data["t10k"], 64)}
  for split, (images, labels, size) in expected.items():
    source = builder.as_data_source(split=split)
    assert len(source) == size
    # tfds stores a split in hashed-key order: compare as sets of examples.
    want = {images[i].tobytes(): int(labels[i]) for i in range(size)}
    got = {source[i]["image"][:, :, 0].tobytes(): int(source[i]["label"])
           for i in range(size)}
    assert got == want


def test_pipeline_reads_pixels_as_tokens_plus_one(fake_source, tmp_path,
                                                  monkeypatch):
  directory, data = fake_source
  monkeypatch.setenv("FASHION_MNIST_DIR", str(directory))
  builder = fashion_mnist.build("smoke", data_dir=str(tmp_path))
  source = builder.as_data_source(split="test")
  batch = next(pipeline.eval_batches(source, global_batch_size=4,
                                     transform=pipeline.PadTokens(784)))
  np.testing.assert_array_equal(batch["tokens"][0],
                                source[0]["image"].reshape(-1) + 1)
  assert (batch["tokens"] > 0).all()  # Black pixels are not padding.
  assert (batch["tokens"][:, :28 * 4] == 1).all()


def test_missing_files_name_the_install_command(tmp_path, monkeypatch):
  monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "absent"))
  with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
    fashion_mnist.load_idx("train")


def test_sequential_image_smoke_trains_through_the_cli(fake_source, tmp_path):
  directory, _ = fake_source
  result = conftest.run_module(
      "experiments.train", "--config=configs/image.py:nystrom,smoke",
      f"--workdir={tmp_path / 'run'}", devices=1,
      TFDS_DATA_DIR=tmp_path / "tfds", FASHION_MNIST_DIR=directory)
  assert result.returncode == 0, result.stderr[-2000:]
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert 0.0 <= results["test/accuracy"] <= 1.0
  missing = conftest.run_module(
      "experiments.train", "--config=configs/image.py:softmax,smoke",
      f"--workdir={tmp_path / 'run2'}", devices=1,
      TFDS_DATA_DIR=tmp_path / "tfds2", FASHION_MNIST_DIR=tmp_path / "absent")
  assert missing.returncode == 2
  assert "apt-get install dataset-fashion-mnist" in missing.stderr


def test_image_to_float_centres_28_in_32_and_scales_to_unit_range():
  image = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
  out = pipeline.ImageToFloat(32).map({"image": image, "label": 7})
  assert out["image"].shape == (32, 32, 1) and out["image"].dtype == np.float32
  assert out["label"] == 7
  np.testing.assert_allclose(out["image"][2:30, 2:30],
                             image.astype(np.float32) / 127.5 - 1.0)
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert (out["image"][border] == -1.0).all()  # Padding is black.
  np.testing.assert_allclose(
      pipeline.ImageToFloat(32).map(
          {"image": np.full((28, 28, 1), 255, np.uint8), "label": 0}
      )["image"][2:30, 2:30], 1.0)
  with pytest.raises(ValueError, match="larger"):
    pipeline.ImageToFloat(16).map({"image": image, "label": 0})


def test_image_to_float_downsample_averages_2x2_blocks_then_pads_to_16():
  image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), np.uint8)
  out = pipeline.ImageToFloat(16, downsample=2).map({"image": image,
                                                      "label": 3})["image"]
  assert out.shape == (16, 16, 1)
  scaled = image.astype(np.float32) / 127.5 - 1.0
  for i, j in ((0, 0), (5, 9), (13, 13)):  # Independent of the reshape.
    np.testing.assert_allclose(out[1 + i, 1 + j, 0],
                               scaled[2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(),
                               rtol=1e-6)
  assert (out[0] == -1).all() and (out[:, 15] == -1).all()
  with pytest.raises(ValueError, match="divisible"):
    pipeline.ImageToFloat(16, downsample=3).map({"image": image, "label": 0})


def test_video_to_float_downsample_averages_2x2_blocks_of_every_frame():
  video = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 1), np.uint8)
  out = pipeline.VideoToFloat(downsample=2).map({"video": video, "label": 4})
  assert out["video"].shape == (3, 16, 16, 1) and out["label"] == 4
  scaled = video.astype(np.float32) / 127.5 - 1.0
  for f, i, j in ((0, 0, 0), (1, 7, 3), (2, 15, 15)):
    np.testing.assert_allclose(
        out["video"][f, i, j, 0],
        scaled[f, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(), rtol=1e-6)
  np.testing.assert_array_equal(
      pipeline.VideoToFloat().map({"video": video, "label": 4})["video"],
      scaled)


def test_image_config_schedules_lra_and_short():
  from configs import image  # pylint: disable=g-import-not-at-top
  for variant, (steps, batch, warmup, every) in (
      ("lra", (35_000, 256, 175, 175)), ("short", (5_000, 32, 1_000, 50))):
    c = image.get_config(f"yoso,variant={variant}")
    assert (c.total_steps, c.batch_size, c.optimizer.warmup_steps,
            c.eval_every) == (steps, batch, warmup, every)
    assert c.model.attention_kwargs.hash_bits == 10  # YOSO's Image tau.
    assert c.select_best == "max:validation/accuracy"
  with pytest.raises(ValueError, match="variant='long'"):
    image.get_config("softmax,variant=long")
