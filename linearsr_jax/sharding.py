"""Device meshes and logical-axis sharding rules, shared by the model, training and tools.

The model names every param and key activation axis logically ("embed", "mlp", ...); a config's
`rules` map those names to mesh axes. The same code then runs on one CPU, 8 fake CPU devices, a
GPU node or a TPU pod: only the mesh shape changes.
"""

from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "expert")

# Logical name -> mesh axis (or axes, or None). Params: fully-sharded over fsdp on the model
# width, tensor-parallel over heads / mlp; activations: batch over data × fsdp.
DEFAULT_RULES = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("caption", None),
    ("layers", None),
    ("expert", "expert"),
    ("vocab", None),
)


def make_mesh(shape: dict | None = None, devices: Sequence | None = None) -> Mesh:
  """A mesh over MESH_AXES; `shape` maps axis -> size, -1 once for 'the rest' (default data)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = {axis: 1 for axis in MESH_AXES} | dict(shape or {"data": -1})
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected {MESH_AXES}")
  fixed = int(np.prod([s for s in shape.values() if s != -1]))
  if list(shape.values()).count(-1) == 1:
    shape = {a: (len(devices) // fixed if s == -1 else s) for a, s in shape.items()}
  sizes = tuple(shape[a] for a in MESH_AXES)
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"have {len(devices)}")
  # Auto axis types: shardings propagate through jit (jax.make_mesh now defaults to Explicit).
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_specs(boxed_tree):
  """PartitionSpecs of logical names, from a tree of nn.LogicallyPartitioned leaves."""
  return nn.get_partition_spec(boxed_tree)


def tree_shardings(boxed_tree, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for every leaf of a (possibly abstract) logically boxed tree."""
  return nn.logical_to_mesh_sharding(logical_specs(boxed_tree), mesh, list(rules))


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
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes_tree, shardings)


def sharded_init(init_fn, mesh: Mesh, rules=DEFAULT_RULES):
  """Runs `init_fn()` (returning a boxed tree) so each leaf is created already sharded.

  Shapes come from eval_shape; nothing large is ever materialised on one device.
  """
  abstract = jax.eval_shape(init_fn)
  shardings = tree_shardings(abstract, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
    params = jax.jit(lambda: nn.unbox(init_fn()), out_shardings=shardings)()
  return params, shardings
