"""Where a trained model's params live while it upscales: replicated on every device of the
mesh, or fully sharded (FSDP) over all of this process's devices, for a model that does not fit
one.

FSDP follows the training's layout (sharding.py): each param's logical axes map to mesh axes by
rules, here every axis training shards (embed over fsdp, heads and mlp over tensor) over all the
devices, the first of a param's axes that their number divides. The tile batch stays data
parallel on the mesh's 'data' axis; jit gathers each layer's params where it uses them. The
expert stack is not sharded: the sampler runs one expert at a time (diffusion/samplers.py), and
a stack sharded by experts would gather a whole expert onto every device. What has no such
axis stays replicated: the LR stem's small convolutions and the output bias.
"""

import flax.traverse_util
import jax
import numpy as np

from linearsr_jax import sharding
from linearsr_jax.diffusion import experts
from linearsr_jax.errors import UserError
from linearsr_jax.models.sr_model import sr_example_inputs

# The mesh axes FSDP params are split over: both, so that every local device holds 1/n of them
# whatever share of the devices the tile batch is split over (UpscaleOptions.batch).
PARAM_AXES = ("data", "fsdp")
FSDP_RULES = tuple((name, PARAM_AXES) for name in ("embed", "mlp", "heads", "caption", "vocab"))


def upscale_mesh(local_devices, batch: int, shard_params: bool):
  """The mesh tiles and params go on: batch over gcd(batch, devices) of them on 'data'; with
  `shard_params` every device, the rest on 'fsdp' (a group of them runs the same tiles)."""
  data = np.gcd(batch, len(local_devices))
  if not shard_params:
    return sharding.make_mesh({"data": -1}, local_devices[:data])
  return sharding.make_mesh({"data": data, "fsdp": -1}, local_devices)


def boxed_param_shapes(model, num_experts: int):
  """The stacked experts' params as abstract, logically boxed arrays: nothing is allocated."""
  inputs = sr_example_inputs(model.dit, model.tags, 1, (4, 4))
  init = lambda key: experts.init_experts(model.init(key, *inputs)["params"], num_experts)
  return jax.eval_shape(init, jax.random.key(0))


def fsdp_shardings(model, num_experts: int, mesh):
  """NamedShardings of the stacked params, FSDP over the mesh's PARAM_AXES. A param with an
  axis to shard that the device count divides nowhere is refused: left replicated it would
  undo what the option is for."""
  boxed = boxed_param_shapes(model, num_experts)
  shardings = sharding.tree_shardings(boxed, mesh, FSDP_RULES)
  devices = mesh.devices.size
  if devices > 1:
    shardable = {name for name, _ in FSDP_RULES}
    flat = flax.traverse_util.flatten_dict(boxed, sep="/")
    flat_shardings = flax.traverse_util.flatten_dict(shardings, sep="/")
    for path, box in flat.items():
      names = [n for n in box.names if n in shardable]
      if names and not any(flat_shardings[path].spec):
        dims = ", ".join(f"{n} {box.value.shape[box.names.index(n)]}" for n in names)
        raise UserError(f"--shard_params: {devices} devices divide no axis of {path} "
                        f"{list(box.value.shape)} ({dims}); use a device count that does")
  return shardings


def bytes_per_device(shapes, shardings) -> int:
  """The bytes of (possibly abstract) arrays `shapes` that each device holds under `shardings`
  (NamedShardings split evenly: every device of the mesh holds as much)."""
  sizes = jax.tree.map(lambda x, s: np.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize,
                       shapes, shardings)
  return int(sum(jax.tree.leaves(sizes)))
