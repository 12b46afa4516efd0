r"""Synthetic class-conditional videos: a Fashion-MNIST object moving over a
textured background, generated locally (LightMotion's test bed).

Each video is 8 frames of 32×32×1 (uint8). The scene is a 64×64 canvas:
Gaussian-smoothed noise (a random blur of 1–3 px, mean intensity 0.15–0.45,
contrast 0.06–0.14) with one Fashion-MNIST item, shrunk from 28 to 16 px,
pasted as a bright object (alpha = the item's intensity) at a position that
moves up to 1 px per frame (20% of the objects stand still) and bounces off
the view's edges. The camera looks at the canvas centre:

  * config `static`: the camera never moves (the training data of the
    static-camera model; 20,000 / 500 / 2,000 videos);
  * config `moving`: each video's camera makes one random `lightmotion`
    move (a pan, zoom, roll or a combination; units of
    `efficient.diffusion.lightmotion.Motion`), rendered with bilinear
    interpolation; the move is stored in `camera` = (x, y, z, θ). It checks
    the motion estimator on videos whose motion is known
    (2,000 / 200 / 1,000);
  * configs `smoke` and `moving_smoke`: 64 / 16 / 16 static and 16 / 8 / 8
    moving-camera videos, for tests;
  * configs `static_bold` and `moving_bold`: the same with a bolder
    background (blur 3–6 px, contrast 0.25–0.40), which a denoiser fixes
    early in sampling.

`mask` holds the object's alpha > 0.1 per frame. Objects come from the
Fashion-MNIST split of the same name (train: the first 55,000 training
images; validation: the last 5,000; test: t10k), through
`efficient.data.fashion_mnist`, so the Debian package
`dataset-fashion-mnist` must be installed. Generation is seeded per video:
the same config gives the same bytes.

  python -m efficient.data.fmnist_video --config=static
"""
import argparse
import dataclasses

import numpy as np
import scipy.ndimage
import tensorflow_datasets as tfds

from efficient.data import fashion_mnist

FRAMES, SIZE, CANVAS, OBJECT = 8, 32, 64, 16
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
# Background texture ranges of the default configs: blur σ (px of the 64²
# canvas) and contrast (std in [0, 1] intensity), drawn uniformly per video.
BLUR, CONTRAST = (1.0, 3.0), (0.06, 0.14)


@dataclasses.dataclass
class FmnistVideoConfig(tfds.core.BuilderConfig):
  num_train: int = 20_000
  num_validation: int = 500
  num_test: int = 2_000
  moving_camera: bool = False
  background_blur: tuple[float, float] = BLUR
  background_contrast: tuple[float, float] = CONTRAST


def random_motion(rng):
  """One camera move: a pan, zoom, roll or a combination of all three."""
  from efficient.diffusion import lightmotion  # pylint: disable=g-import-not-at-top
  kind = rng.choice(["pan", "zoom", "roll", "combined"])
  x, y = rng.uniform(-0.25, 0.25, 2)
  z, theta = rng.uniform(-0.2, 0.3), rng.uniform(-20.0, 20.0)
  if kind == "pan":
    return lightmotion.Motion(x=x, y=y)
  if kind == "zoom":
    return lightmotion.Motion(z=z)
  if kind == "roll":
    return lightmotion.Motion(theta=theta)
  return lightmotion.Motion(x=x / 2, y=y / 2, z=z / 2, theta=theta / 2)


def _background(rng, blur=BLUR, contrast=CONTRAST):
  noise = scipy.ndimage.gaussian_filter(rng.normal(size=(CANVAS, CANVAS)),
                                        rng.uniform(*blur), mode="wrap")
  noise = (noise - noise.mean()) / noise.std()
  return np.clip(rng.uniform(0.15, 0.45) + rng.uniform(*contrast) * noise,
                 0.0, 1.0)


def _object_track(rng):
  """Top-left canvas positions [F, 2] of the object, inside the view."""
  low = (CANVAS - SIZE) // 2
  high = low + SIZE - OBJECT
  position = rng.uniform(low, high, 2)
  velocity = (rng.uniform(-1.0, 1.0, 2) if rng.random() > 0.2 else
              np.zeros(2))
  track = []
  for _ in range(FRAMES):
    track.append(np.round(position).astype(int))
    position = position + velocity
    for axis in range(2):  # Bounce off the view's edges.
      if not low <= position[axis] <= high:
        velocity[axis] = -velocity[axis]
        position[axis] = np.clip(position[axis], low, high)
  return np.array(track)


def _view(canvas, matrix):
  """The SIZE² view of the canvas centre through a content transform."""
  rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
  centre = (SIZE - 1) / 2
  points = np.stack([cols - centre, rows - centre, np.ones((SIZE, SIZE))], -1)
  scene = points @ np.linalg.inv(matrix).T
  offset = (CANVAS - 1) / 2
  return scipy.ndimage.map_coordinates(
      canvas, [scene[..., 1] + offset, scene[..., 0] + offset], order=1,
      mode="nearest")


def render(item, rng, moving_camera, blur=BLUR, contrast=CONTRAST):
  """(video uint8 [F, 32, 32, 1], mask uint8 [F, 32, 32], camera [4]);
  `blur`, `contrast`: the background's ranges (FmnistVideoConfig)."""
  from efficient.diffusion import lightmotion  # pylint: disable=g-import-not-at-top
  background = _background(rng, blur, contrast)
  alpha = scipy.ndimage.zoom(item.astype(np.float64) / 255.0,
                             OBJECT / item.shape[0], order=1)
  alpha = np.clip(alpha, 0.0, 1.0)
  motion = random_motion(rng) if moving_camera else lightmotion.Motion()
  path = lightmotion.camera_path(motion, FRAMES, SIZE, SIZE)
  frames, masks = [], []
  for f, (top, left) in enumerate(_object_track(rng)):
    canvas_alpha = np.zeros((CANVAS, CANVAS))
    canvas_alpha[top:top + OBJECT, left:left + OBJECT] = alpha
    canvas = background * (1 - canvas_alpha) + canvas_alpha
    if moving_camera:
      frame, frame_alpha = _view(canvas, path[f]), _view(canvas_alpha, path[f])
    else:
      low = (CANVAS - SIZE) // 2
      frame = canvas[low:low + SIZE, low:low + SIZE]
      frame_alpha = canvas_alpha[low:low + SIZE, low:low + SIZE]
    frames.append(frame)
    masks.append(frame_alpha > 0.1)
  video = np.round(np.clip(np.stack(frames), 0, 1) * 255).astype(np.uint8)
  camera = np.array([motion.x, motion.y, motion.z, motion.theta], np.float32)
  return video[..., None], np.stack(masks).astype(np.uint8), camera


class FmnistVideo(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST objects moving over textured backgrounds (8×32×32×1)."""

  name = "fmnist_video"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      FmnistVideoConfig(name="static", description="Static camera."),
      FmnistVideoConfig(name="moving", description="Random camera moves.",
                        num_train=2_000, num_validation=200, num_test=1_000,
                        moving_camera=True),
      FmnistVideoConfig(name="smoke", description="64 / 16 / 16, for tests.",
                        num_train=64, num_validation=16, num_test=16),
      FmnistVideoConfig(name="moving_smoke", description="16 / 8 / 8 moving.",
                        num_train=16, num_validation=8, num_test=8,
                        moving_camera=True),
      # Bold backgrounds: 3× the contrast at 2× the scale, so a denoiser
      # fixes the background's layout early in sampling, as it does for real
      # scenes (what latent permutation relies on; experiments/lightmotion/
      # README.md says why the default texture failed that).
      FmnistVideoConfig(name="static_bold", description="Static, bold.",
                        background_blur=(3.0, 6.0),
                        background_contrast=(0.25, 0.40)),
      FmnistVideoConfig(name="moving_bold", description="Moving, bold.",
                        num_train=2_000, num_validation=200, num_test=1_000,
                        moving_camera=True, background_blur=(3.0, 6.0),
                        background_contrast=(0.25, 0.40)),
  ]
  DEFAULT_CONFIG_NAME = "static"

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(shape=(FRAMES, SIZE, SIZE, 1),
                                          dtype=np.uint8),
            "mask": tfds.features.Tensor(shape=(FRAMES, SIZE, SIZE),
                                         dtype=np.uint8),
            "camera": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "label": tfds.features.ClassLabel(names=fashion_mnist.CLASSES),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated from the installed Fashion-MNIST files.
    train_images, train_labels = fashion_mnist.load_idx("train")
    test_images, test_labels = fashion_mnist.load_idx("t10k")
    cut = len(train_images) - fashion_mnist.NUM_VALIDATION
    c = self.builder_config
    items = {"train": (train_images[:cut], train_labels[:cut], c.num_train),
             "validation": (train_images[cut:], train_labels[cut:],
                            c.num_validation),
             "test": (test_images, test_labels, c.num_test)}
    return {split: self._generate_examples(split, *value)
            for split, value in items.items()}

  def _generate_examples(self, split, images, labels, count):
    c = self.builder_config
    moving = c.moving_camera
    for i in range(count):
      rng = np.random.default_rng([SPLIT_SEEDS[split], int(moving), i])
      j = i % len(images)
      video, mask, camera = render(images[j], rng, moving,
                                   c.background_blur, c.background_contrast)
      yield i, {"video": video, "mask": mask, "camera": camera,
                "label": int(labels[j])}


def build(config="static", data_dir=None):
  builder = FmnistVideo(config=config, data_dir=data_dir,
                        file_format="array_record")
  builder.download_and_prepare()
  return builder


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="Builds fmnist_video (tfds).")
  parser.add_argument("--config", default="static",
                      choices=[c.name for c in FmnistVideo.BUILDER_CONFIGS])
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args()
  built = build(args.config, args.data_dir)
  for name in ("train", "validation", "test"):
    print(name, len(built.as_data_source(split=name)))
