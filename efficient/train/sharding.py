"""Device mesh, the one logical-axis rules table, and batch placement.

Models annotate parameters with logical axis names
(`nn.with_logical_partitioning(init, ("embed", "mlp"))`) and activations with
`nn.with_logical_constraint(x, ("batch", "length", "embed"))`. `LOGICAL_RULES`
maps those names onto the mesh axes `data`, `fsdp` and `model`:

  * the batch is split over `data` and `fsdp` (data parallelism; with fsdp > 1
    the parameters' `embed` dimension is split too, ZeRO-3 style),
  * `mlp`, `heads` and `vocab` dimensions go over `model` (tensor parallelism).

Flax resolves rules in order and never uses a mesh axis twice in one array, so
an activation `("batch", "length", "embed")` gets `(("data", "fsdp"), None,
None)` while a weight `("embed", "mlp")` gets `("fsdp", "model")`.

A dimension that the mesh axes do not divide is replicated instead (logged
once per parameter), so a 16-token vocabulary still runs on 8 devices.
"""
import math
import os

from absl import logging
import flax.linen as nn
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import numpy as np

LOGICAL_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("vocab", "model"),
    ("kv", None),
    ("length", None),
    ("classes", None),
    ("conv", None),
)

BATCH_AXES = ("data", "fsdp")


def maybe_initialize_distributed():
  """Calls `jax.distributed.initialize()` when $EFFICIENT_DISTRIBUTED is set.

  Multi-host runs (TPU pods, multi-node GPU) need it; a plain single-host CPU
  or GPU box does not, and there the argument-less call fails (no coordinator
  address), hence the opt-in flag (big_vision's BV_JAX_INIT, renamed).
  """
  if os.environ.get("EFFICIENT_DISTRIBUTED", "") not in ("", "0"):
    jax.distributed.initialize()


def make_mesh(axes, devices=None):
  """Builds a mesh from `(("data", -1), ("fsdp", 1), ("model", 1))`.

  One size may be -1: it takes all the devices the others leave. Axis types
  are Auto, which Linen's logical constraints need (Explicit, the default of
  `jax.make_mesh`, turns them into assertions).
  """
  devices = jax.devices() if devices is None else devices
  names = tuple(name for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh={axes}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"config.mesh={axes}: {len(devices)} devices are not "
                       f"divisible by the fixed axes' product {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"config.mesh={axes} needs {math.prod(sizes)} devices, "
                     f"{len(devices)} are available")
  return jax.make_mesh(tuple(sizes), names, devices=devices,
                       axis_types=(AxisType.Auto,) * len(names))


def _fit(spec, shape, mesh, name=""):
  """Drops mesh axes from `spec` where they do not divide the dimension."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    group = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in group)
    if group and dim % size:
      logging.info("sharding: %s dim %d not divisible by %s=%d; replicated",
                   name, dim, group, size)
      axes = None
    fitted.append(axes)
  return P(*fitted)


def unbox(tree):
  """Strips Linen's logical-partitioning boxes without adding constraints.

  (`nn.unbox` also applies a sharding constraint, which fails on the
  ShapeDtypeStructs of `jax.eval_shape` outside jit.)
  """
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(
      lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
      is_leaf=is_box)


def state_shardings(abstract_boxed, mesh, rules=LOGICAL_RULES):
  """NamedShardings for an abstract tree whose leaves may be boxed.

  Args:
    abstract_boxed: `jax.eval_shape` of an init function that returns Linen
      `LogicallyPartitioned` boxes (unannotated leaves are replicated).
    mesh: the device mesh.
    rules: logical-to-mesh rules.

  Returns:
    A tree of NamedSharding with the structure of `nn.unbox(abstract_boxed)`.
  """
  specs = jax.tree.leaves(nn.get_partition_spec(abstract_boxed),
                          is_leaf=lambda x: isinstance(x, P))
  paths_and_shapes, treedef = jax.tree_util.tree_flatten_with_path(
      unbox(abstract_boxed))
  shardings = []
  for spec, (path, shape) in zip(specs, paths_and_shapes, strict=True):
    mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) if spec else P()
    name = jax.tree_util.keystr(path)
    shardings.append(NamedSharding(mesh, _fit(mesh_spec, shape.shape, mesh,
                                              name)))
  return jax.tree.unflatten(treedef, shardings)


def batch_sharding(mesh):
  """Leading (batch) dimension over data+fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def num_batch_shards(mesh):
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def shard_batch(local_batch, mesh):
  """Assembles this process's batch slice into global arrays on the mesh."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)
