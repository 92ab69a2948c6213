"""Cloud TPU slice names (`v5e-64`, `v4-32`, …) → libtpu topologies, and each chip's public specs.

v5e and v6e slices are named by chips, v4 and v5p by TensorCores (two per chip, one JAX device
per chip as on a real pod: v4 runs in megacore mode). Peak bf16 FLOP/s, HBM bandwidth and HBM
size are Google's published per-chip figures (cloud.google.com/tpu/docs/system-architecture).
"""

import dataclasses
import os
import re

from linearsr_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Chip:
  generation: str  # libtpu's topology prefix
  cores_per_name_unit: int  # Cloud TPU counts chips (1) or TensorCores (2) in slice names
  hbm_gib: float
  peak_bf16_tflops: float
  hbm_gbps: float
  chip_config: str
  dims: int  # 2-D torus (v5e, v6e) or 3-D (v4, v5p)


CHIPS = {
    "v4": Chip("v4", 2, 32, 275, 1228, "megacore", 3),
    "v5e": Chip("v5e", 1, 16, 197, 819, "default", 2),
    "v5p": Chip("v5p", 2, 95, 459, 2765, "default", 3),
    "v6e": Chip("v6e", 1, 32, 918, 1640, "default", 2),
}


@dataclasses.dataclass(frozen=True)
class Pod:
  name: str
  chip: Chip
  chips: int
  topology: tuple[int, ...]

  @property
  def topology_name(self) -> str:
    return f"{self.chip.generation}:{'x'.join(map(str, self.topology))}"

  @property
  def accelerator_type(self) -> str:
    """The name Cloud TPU's metadata gives a VM of this slice (v5e is "v5litepod")."""
    prefix = "v5litepod" if self.chip.generation == "v5e" else self.chip.generation
    return f"{prefix}-{self.chips * self.chip.cores_per_name_unit}"

  @property
  def host_bounds(self) -> tuple[int, int, int]:
    """4 chips per host (2×2), as on every multi-host slice of these generations."""
    bounds = tuple(min(2, n) for n in self.topology[:2])
    return bounds + (1,)


# Slice shapes by chip count, as Cloud TPU builds them.
SHAPES = {
    2: {
        1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
        256: (16, 16)
    },
    3: {
        4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
        256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)
    },
}

NAME = re.compile(r"(v4|v5e|v5litepod|v5p|v6e)-(\d+)")


def parse_pod(name: str) -> Pod:
  """`v5e-64` → Pod(v5e, 64 chips, 8×8); also `v5litepod-64`."""
  match = NAME.fullmatch(name.strip().lower())
  if not match:
    raise UserError(f"--topology {name!r}: expected a Cloud TPU slice name such as v5e-16, "
                    f"v5p-128, v4-32 or v6e-64 (generations: {', '.join(CHIPS)})")
  chip = CHIPS["v5e" if match[1] == "v5litepod" else match[1]]
  count = int(match[2])
  chips, rest = divmod(count, chip.cores_per_name_unit)
  shapes = SHAPES[chip.dims]
  if rest or chips not in shapes:
    sizes = ", ".join(f"{chip.generation}-{n * chip.cores_per_name_unit}" for n in shapes)
    raise UserError(f"--topology {name}: no such slice (there are {sizes})")
  return Pod(name, chip, chips, shapes[chips])


def pod_devices(pod: Pod):
  """The devices of that slice, from libtpu, with no TPU attached."""
  # libtpu lets one process at a time hold a machine's TPU (a lock file in /tmp); compiling
  # for a described slice uses none, so several compiles (or a training run) may coexist.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if not _tpu_attached():
    # Off a TPU VM, libtpu asks the VM metadata for these, fails, and logs an alarming
    # INVALID_ARGUMENT; the described slice does not depend on them.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", pod.accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  try:
    from jax.experimental import topologies
    topology = topologies.get_topology_desc(platform="tpu", topology_name=pod.topology_name,
                                            chip_config_name=pod.chip.chip_config,
                                            chips_per_host_bounds=pod.host_bounds, num_slices=1)
  except (RuntimeError, ValueError) as e:
    raise UserError(f"--topology {pod.name}: libtpu cannot describe {pod.topology_name} "
                    f"({str(e).splitlines()[0][:200]}); is libtpu installed (requirements.txt)?") \
        from None
  devices = list(topology.devices)
  if len(devices) != pod.chips:
    raise UserError(f"--topology {pod.name}: libtpu gave {len(devices)} devices for "
                    f"{pod.chips} chips")
  return devices


def _tpu_attached() -> bool:
  from linearsr_jax import jax_private
  return jax_private.tpu_chips_attached()
