r"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) from the Debian package.

The idx files come from `apt-get install dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist; `$FASHION_MNIST_DIR` points elsewhere);
nothing is downloaded. Images are stored as 28×28×1 uint8 tensors with their
class (10), so both the sequential-image task (LRA-Image style, 784 pixels as a
sequence) and the diffusion work read the same data.

Splits: `train` = the first 55,000 training images, `validation` = the last
5,000 (LRA's Image task holds out 5,000 of CIFAR's 50,000 the same way),
`test` = the 10,000 `t10k` images. Config `smoke` keeps 256 / 64 / 64.

For sequence models the pipeline turns an image into tokens `pixel + 1`
(1..256), row-major, because token 0 means padding in this framework; the
original LRA harness used raw intensities with `mask = ids != 0`, which would
mask every black pixel here (Fashion-MNIST backgrounds are 0).

  python -m efficient.data.fashion_mnist [--config=full] [--data_dir=DIR]
"""
import argparse
import dataclasses
import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

from efficient.errors import ConfigError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
           "Shirt", "Sneaker", "Bag", "Ankle boot")
NUM_VALIDATION = 5_000


def source_dir():
  return os.environ.get("FASHION_MNIST_DIR", DEFAULT_DIR)


def load_idx(split, directory=None):
  """(images uint8 [N, 28, 28], labels uint8 [N]) of "train" or "t10k"."""
  directory = directory or source_dir()
  paths = [os.path.join(directory, f"{split}-{kind}-ubyte.gz")
           for kind in ("images-idx3", "labels-idx1")]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise ConfigError(
        f"Fashion-MNIST file {missing[0]} not found: install it with "
        "`apt-get install dataset-fashion-mnist` or set $FASHION_MNIST_DIR")
  with gzip.open(paths[0]) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  with gzip.open(paths[1]) as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
  if len(images) != len(labels):
    raise ConfigError(f"Fashion-MNIST in {directory}: {len(images)} images "
                      f"but {len(labels)} labels")
  return images, labels


@dataclasses.dataclass
class FashionMnistConfig(tfds.core.BuilderConfig):
  """How many examples of each split to keep, from the start (None: all)."""
  num_train: int | None = None
  num_validation: int | None = None
  num_test: int | None = None


class FashionMnistDeb(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST read from the Debian package's idx files."""

  name = "fashion_mnist_deb"  # tfds itself registers "fashion_mnist".
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      FashionMnistConfig(name="full", description="55k / 5k / 10k."),
      FashionMnistConfig(name="smoke", description="256 / 64 / 64, for tests.",
                         num_train=256, num_validation=64, num_test=64),
  ]
  DEFAULT_CONFIG_NAME = "full"

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist")

  def _split_generators(self, dl_manager):
    del dl_manager  # Read from the installed package.
    train_images, train_labels = load_idx("train")
    test_images, test_labels = load_idx("t10k")
    cut = len(train_images) - NUM_VALIDATION
    c = self.builder_config
    splits = {
        "train": (train_images[:cut], train_labels[:cut], c.num_train),
        "validation": (train_images[cut:], train_labels[cut:],
                       c.num_validation),
        "test": (test_images, test_labels, c.num_test),
    }
    return {name: self._generate_examples(images[:keep], labels[:keep])
            for name, (images, labels, keep) in splits.items()}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[:, :, None], "label": int(label)}


def build(config="full", data_dir=None):
  builder = FashionMnistDeb(config=config, data_dir=data_dir,
                            file_format="array_record")
  builder.download_and_prepare()
  return builder


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="Builds Fashion-MNIST (tfds).")
  parser.add_argument("--config", default="full", choices=["full", "smoke"])
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args()
  built = build(args.config, args.data_dir)
  for split in ("train", "validation", "test"):
    print(split, len(built.as_data_source(split=split)))
