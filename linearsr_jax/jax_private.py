"""The private JAX APIs (`jax._src`) the project calls, in one place, each with the reason no
public API will do. jax is pinned (requirements.txt); an upgrade that moves one of them breaks
here, in one small module, rather than in a command."""

from jax._src import hardware_utils, xla_bridge
from jax._src.lib import _jax


def accelerator_attached() -> bool:
  """Whether a TPU, NVIDIA GPU or AMD GPU is on this host's PCI bus: the probe JAX itself runs
  before starting libtpu. Public JAX only answers by starting a backend, which is what the
  caller wants to avoid where there is none (a screen of libtpu warnings)."""
  return bool(hardware_utils.num_available_tpu_chips_and_device_id()[0] or
              hardware_utils.has_visible_nvidia_gpu() or
              hardware_utils.num_available_amd_gpus(stop_at=1))


def tpu_chips_attached() -> bool:
  """Whether this host has TPU chips on its PCI bus, asked without starting a TPU runtime (as
  `accelerator_attached`)."""
  return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0


def hlo_module_cost(module) -> dict:
  """XLA's generic HloCostAnalysis of one HLO module, on the CPU client: XLA:GPU compiled
  without a GPU gives no cost analysis, and only the private bindings reach the generic one."""
  return _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)
