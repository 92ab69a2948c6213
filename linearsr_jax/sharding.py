"""Device meshes and logical-axis sharding rules, shared by the model, training and tools.

The model names every param and key activation axis logically ("embed", "mlp", ...); a config's
`rules` map those names to mesh axes. The same code then runs on one CPU, 8 fake CPU devices, a
GPU node or a TPU pod: only the mesh shape changes.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "expert")
# The batch dimension's mesh axes, expert-major: sample b of a 4-expert step belongs to expert
# b // (B/4) (diffusion/experts.py), so with an expert axis of 4 each expert's samples already
# sit on the chips that hold that expert, and no chip runs (or gathers) another expert.
BATCH_AXES = ("expert", "data", "fsdp")

# Logical name -> mesh axis (or axes, or None). A name may have several rules: `mesh_spec` tries
# them in order. Params: experts over the expert axis; fully sharded over fsdp on the model width
# (over fsdp × expert where the expert axis holds no experts: a 1-expert stage on a mesh with
# an expert axis); tensor-parallel over heads / mlp. Activations: batch over BATCH_AXES (inside
# the experts' vmap the expert axes shard the experts instead, see diffusion/experts.py).
DEFAULT_RULES = (
    ("expert", "expert"),
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("embed", ("fsdp", "expert")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("caption", None),
    ("layers", None),
    ("vocab", None),
)


def mesh_axes_of(axes) -> tuple:
  """A rule's mesh axes as a tuple: None -> (), 'fsdp' -> ('fsdp',)."""
  return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def batch_axes(rules=None) -> tuple:
  """The mesh axes the batch dimension is split over: the `activation_batch` rule's, so the
  input batch arrives sharded as the model's activations are."""
  for name, axes in rules or DEFAULT_RULES:
    if name == "activation_batch":
      return mesh_axes_of(axes)
  return ()


def batch_sharding(mesh, rules=None):
  """Batch dimension split as the rules' `activation_batch` says (default rules:
  `BATCH_AXES`), over the mesh axes the mesh has; the rest replicated."""
  axes = tuple(a for a in batch_axes(rules) if a in mesh.axis_names)
  return NamedSharding(mesh, PartitionSpec(axes or None))


def batch_shards(mesh, rules=None) -> int:
  """How many ways `batch_sharding` splits the batch dimension."""
  axes = batch_sharding(mesh, rules).spec[0] or ()
  return math.prod(mesh.shape[a] for a in axes)


def mesh_spec(names, shape, mesh: Mesh, rules=DEFAULT_RULES) -> PartitionSpec:
  """The PartitionSpec of an array with logical dim `names` and `shape`, by flax's rule order
  (each rule in turn applies to the dim it names if that dim is unassigned and none of its mesh
  axes is taken), with two differences. A rule is skipped where its mesh axes do not divide the
  dim: a stack of 1 expert leaves an expert axis of 4 to the next rules. And a rule of several
  mesh axes drops those of size 1 (skipped if none is left), so ('fsdp', 'expert') on a mesh
  without an expert axis is plain 'fsdp'."""
  spec, assigned, used = [None] * len(names), [False] * len(names), set()
  for name, axes in rules:
    if name not in names:
      continue
    i, mesh_axes = names.index(name), mesh_axes_of(axes)
    if len(mesh_axes) > 1:
      mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1)
      if not mesh_axes:
        continue
      axes = mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes
    if assigned[i] or used & set(mesh_axes) or shape[i] % int(
        np.prod([mesh.shape[a] for a in mesh_axes])):
      continue
    spec[i], assigned[i] = axes if axes is None or isinstance(axes, str) else mesh_axes, True
    used |= set(mesh_axes)
  return PartitionSpec(*spec)


def mesh_sizes(shape: dict | None, num_devices: int | None = None) -> dict:
  """{axis: size} over MESH_AXES for `shape` (axis -> size, -1 once for 'the rest'; default
  all on data). With `num_devices` the -1 is resolved and the sizes must use every device;
  without, only the shape itself is checked. A ValueError says what does not fit."""
  sizes = {axis: 1 for axis in MESH_AXES} | dict(shape or {"data": -1})
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected {MESH_AXES}")
  if any(s < 1 and s != -1 for s in sizes.values()) or list(sizes.values()).count(-1) > 1:
    raise ValueError(f"mesh {sizes}: sizes must be positive, except one -1 for the remaining "
                     "devices")
  if num_devices is None:
    return sizes
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if -1 in sizes.values():
    if num_devices % fixed:
      raise ValueError(f"mesh {sizes} needs a multiple of {fixed} devices, have {num_devices}")
    sizes = {a: (num_devices // fixed if s == -1 else s) for a, s in sizes.items()}
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, have {num_devices}")
  return sizes


def make_mesh(shape: dict | None = None, devices: Sequence | None = None) -> Mesh:
  """A mesh over MESH_AXES of `devices` (default all); `shape` as `mesh_sizes` takes it."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_sizes(shape, len(devices))
  # Devices in the order of the physical torus (a plain reshape of the list would not be, on a
  # TPU pod: neighbours on an axis must be ICI neighbours); CPUs and GPUs keep list order.
  # Auto axis types: shardings propagate through jit (jax.make_mesh now defaults to Explicit).
  return Mesh(
      mesh_utils.create_device_mesh(tuple(sizes.values()), devices, allow_split_physical_axes=True),
      MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def tree_shardings(boxed_tree, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for every leaf of a (possibly abstract) logically boxed tree (`mesh_spec`);
  unboxed leaves are replicated."""

  def leaf_sharding(leaf):
    # Adafactor's factored moments keep their param's box but not its rank: replicated.
    if isinstance(leaf, nn.LogicallyPartitioned) and len(leaf.names) == len(leaf.value.shape):
      return NamedSharding(mesh, mesh_spec(leaf.names, leaf.value.shape, mesh, rules))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(leaf_sharding, boxed_tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def put_on_mesh(host_tree, shardings):
  """Host (NumPy) values -> global arrays with the given shardings. Every process passes the
  same values and uploads only its own devices' shards, so this works on a multi-host mesh
  and never puts a whole large array on one device."""

  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

  return jax.tree.map(put, host_tree, shardings)


def abstract_on_mesh(shapes_tree, shardings):
  """ShapeDtypeStructs that carry shardings: what Orbax restores into and what jit lowers."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes_tree,
                      shardings)
