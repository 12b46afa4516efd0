"""Metric writing: JSONL (one object per log step) and TensorBoard events.

Only process 0 writes. TensorBoard files come from tensorboardX, so no
TensorFlow is needed (clu's writers import it). On resume, records past the
restored step are dropped from `metrics.jsonl`, so the file never holds two
records for one step of one run.
"""
import json
import os

import jax
import numpy as np


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
  """Appends `{"step": s, **metrics}` lines to `<workdir>/metrics.jsonl`."""

  def __init__(self, workdir, resume_step=None, tensorboard=True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate(-1 if resume_step is None else resume_step)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def _truncate(self, last_step):
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      records = [line for line in f if line.strip()]
    keep = [r for r in records if json.loads(r)["step"] <= last_step]
    if len(keep) != len(records):
      with open(self.path, "w") as f:
        f.writelines(keep)

  def write(self, step, metrics):
    if not self.active:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, int(step))

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path):
  """Reads a metrics.jsonl file into a list of dicts (for notebooks/plots)."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
