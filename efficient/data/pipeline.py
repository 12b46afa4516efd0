"""grain input pipelines over tfds array_record data.

Training: an infinite, shuffled, per-process-sharded `grain.DataLoader` whose
iterator state is saved in every checkpoint, so a resumed run sees exactly the
batches an uninterrupted one would. Evaluation: one deterministic pass over a
split, padded to whole batches with `weight = 0` examples so every example is
counted once on any number of processes.

Batch sizes in the config are global; each process loads
`global_batch_size // jax.process_count()` examples.
"""
import math
import os

from absl import logging
import grain
import jax
import numpy as np

from efficient import data as data_lib
from efficient.errors import ConfigError


def check_data_dir(cfg):
  if cfg.data_dir and not os.path.isdir(cfg.data_dir):
    raise ConfigError(f"config.data.data_dir={cfg.data_dir!r} does not exist")


def load_builder(cfg):
  """Returns the prepared tfds builder for `config.data`, building if needed.

  The data directory is `cfg.data_dir`, else `$TFDS_DATA_DIR`, else the tfds
  default (~/tensorflow_datasets). A `cfg.data_dir` that does not exist is a
  config error (a typo would otherwise silently rebuild the data elsewhere).
  """
  check_data_dir(cfg)
  data_dir = cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or None
  builder = data_lib.get_builder_class(cfg.name)(
      config=cfg.builder_config, data_dir=data_dir,
      file_format="array_record")
  if not builder.is_prepared():
    if not cfg.prepare:
      raise ConfigError(
          f"config.data: {cfg.name}/{cfg.builder_config} is not built in "
          f"{builder.data_dir}; set config.data.prepare=True or run "
          f"python -m efficient.data.{cfg.name} --config={cfg.builder_config}")
    logging.info("Building %s/%s in %s (first use).", cfg.name,
                 cfg.builder_config, builder.data_dir)
    builder.download_and_prepare()
  return builder


class Subset:
  """The rows `indices` of a random-access data source (sample selection)."""

  def __init__(self, source, indices):
    self.source, self.indices = source, np.asarray(indices)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]


class PadTokens(grain.transforms.Map):
  """Pads (with 0) or truncates `tokens` to `max_length`; keeps the label.

  An `image` (uint8) becomes the row-major sequence of `pixel + 1`, since 0 is
  the padding id (the sequential-image task).
  """

  def __init__(self, max_length):
    self.max_length = max_length

  def map(self, element):
    if "image" in element:
      tokens = np.asarray(element["image"], np.int32).reshape(-1) + 1
    else:
      tokens = np.asarray(element["tokens"], np.int32)
    tokens = tokens[:self.max_length]
    padded = np.zeros(self.max_length, np.int32)
    padded[:len(tokens)] = tokens
    return {"tokens": padded, "label": np.int32(element["label"])}


def block_mean(x, k):
  """Averages k×k pixel blocks of [..., h, w, c] (h, w divisible by k)."""
  if k == 1:
    return x
  *lead, h, w, c = x.shape
  if h % k or w % k:
    raise ValueError(f"image {h}×{w} is not divisible by downsample={k}")
  return x.reshape(*lead, h // k, k, w // k, k, c).mean(axis=(-4, -2))


class ImageToFloat(grain.transforms.Map):
  """uint8 image [h, w, c] → float32 in [−1, 1], zero-padded to `size`².

  Fashion-MNIST's 28×28 becomes 32×32 with a 2-pixel black border (the
  background value, −1), the usual way to give it a power-of-two side for
  patch-2 / ×2-upsampling diffusion backbones. `downsample` = k first
  averages k×k pixel blocks (28×28 → 14×14 for k = 2, then padded to 16×16):
  the cheap small-image variant of the diffusion experiment.
  """

  def __init__(self, size, downsample=1):
    self.size = size
    self.downsample = downsample

  def map(self, element):
    image = block_mean(np.asarray(element["image"], np.float32) / 127.5 - 1.0,
                       self.downsample)
    h, w = image.shape[:2]
    if h > self.size or w > self.size:
      raise ValueError(f"image {h}×{w} is larger than size {self.size}")
    top, left = (self.size - h) // 2, (self.size - w) // 2
    padded = np.full((self.size, self.size, image.shape[2]), -1.0, np.float32)
    padded[top:top + h, left:left + w] = image
    return {"image": padded, "label": np.int32(element["label"])}


class VideoToFloat(grain.transforms.Map):
  """uint8 video [F, h, w, c] → float32 in [−1, 1] (key "video"), + label;
  `downsample` = k averages k×k pixel blocks of every frame (32×32 → 16×16
  for k = 2)."""

  def __init__(self, downsample=1):
    self.downsample = downsample

  def map(self, element):
    video = np.asarray(element["video"], np.float32) / 127.5 - 1.0
    return {"video": block_mean(video, self.downsample),
            "label": np.int32(element["label"])}


def _local_batch_size(global_batch_size):
  if global_batch_size % jax.process_count():
    raise ConfigError(f"config.batch_size={global_batch_size} is not divisible "
                      f"by the {jax.process_count()} processes")
  return global_batch_size // jax.process_count()


def train_iterator(source, *, global_batch_size, transform, seed):
  """Infinite shuffled batches of `transform`ed examples (a grain Map, e.g.
  `PadTokens(max_length)`); the iterator has get_state()/set_state()."""
  sampler = grain.samplers.IndexSampler(
      num_records=len(source),
      shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
      shuffle=True, num_epochs=None, seed=seed)
  local = _local_batch_size(global_batch_size)
  # One read-ahead thread: grain's default (16 threads, 500 records) spends
  # the host's time polling its futures and holding the GIL — 14 batches/s
  # of 64 Fashion-MNIST images against 42 with one thread (measured on this
  # repo's 2-core CPU), which was the bound of 16x16 diffusion on an H200.
  loader = grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[transform, grain.transforms.Batch(local, drop_remainder=True)],
      worker_count=0,
      read_options=grain.ReadOptions(num_threads=1,
                                     prefetch_buffer_size=2 * local))
  return iter(loader)


def num_eval_batches(source, global_batch_size):
  """How many batches `eval_batches` yields (the same on every process)."""
  count = jax.process_count()
  return math.ceil(math.ceil(len(source) / count) /
                   _local_batch_size(global_batch_size))


def eval_batches(source, *, global_batch_size, transform):
  """One pass over `source`, this process's share, in whole padded batches.

  Yields the `transform`ed examples' fields stacked, plus `weight` (1 real, 0
  padding: an all-zero example). Every process yields the same number of
  batches.
  """
  local = _local_batch_size(global_batch_size)
  index, count = jax.process_index(), jax.process_count()
  mine = list(range(index, len(source), count))
  num_batches = num_eval_batches(source, global_batch_size)
  filler = {k: np.zeros_like(v) for k, v in transform.map(source[0]).items()}
  for b in range(num_batches):
    chunk = mine[b * local:(b + 1) * local]
    examples = [transform.map(source[i]) for i in chunk]
    weight = np.zeros(local, np.float32)
    weight[:len(examples)] = 1.0
    examples += [filler] * (local - len(examples))
    batch = {k: np.stack([e[k] for e in examples]) for k in filler}
    batch["weight"] = weight
    yield batch


def label_counts(source, num_classes, limit=None):
  """Label histogram of (the first `limit` examples of) a split."""
  n = len(source) if limit is None else min(limit, len(source))
  counts = np.zeros(num_classes, np.int64)
  for i in range(n):
    counts[int(source[i]["label"])] += 1
  return counts
