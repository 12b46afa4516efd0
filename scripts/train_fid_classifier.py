r"""Trains the Fashion-MNIST classifier whose features FID/KID use, and caches
it in the dataset's directory (efficient/diffusion/fid.py says where).

  python scripts/train_fid_classifier.py [--config=full] [--steps=1500] \
      [--image_size=32] [--downsample=1] [--data_dir=DIR] [--force]

`--image_size=16 --downsample=2` is the classifier of the 16×16 diffusion
variants (configs/diffusion.py: fmnist16_*).

Diffusion runs train it on first use anyway; running this first keeps that
time out of a run's wall clock and prints the classifier's test accuracy.
"""
import argparse
import json
import os

from efficient.data import fashion_mnist
from efficient.data import pipeline
from efficient.diffusion import fid


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="full", choices=["full", "smoke"])
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--downsample", type=int, default=1)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--force", action="store_true",
                      help="retrain even if a cached classifier exists")
  args = parser.parse_args()
  builder = fashion_mnist.build(args.config, args.data_dir)
  transform = pipeline.ImageToFloat(args.image_size, args.downsample)
  path = os.path.join(builder.data_dir, fid.checkpoint_name(transform))
  if args.force and os.path.exists(path):
    os.remove(path)
  _, info = fid.load_or_train(builder, transform=transform, steps=args.steps)
  print(json.dumps({"checkpoint": path, **info}, indent=1))


if __name__ == "__main__":
  main()
