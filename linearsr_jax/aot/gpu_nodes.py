"""NVIDIA GPU nodes (`h100-8`, `a100-16`, …) → the CUDA plugin's deviceless topologies, and each
GPU's public specs.

A node is 8 GPUs on NVLink; `h100-16` is 2 such nodes. Peak dense bf16 FLOP/s and HBM bandwidth
are NVIDIA's published SXM figures (H100 and A100 datasheets); HBM is the nominal 80 GB, of
which CUDA sees 79.1 GiB and JAX preallocates 75 % unless XLA_PYTHON_CLIENT_MEM_FRACTION says
otherwise.
"""

import dataclasses
import importlib.util
import re

from linearsr_jax.errors import UserError

GPUS_PER_NODE = 8
NAME = re.compile(r"(h100|a100)-(\d+)")
PLUGIN = "jax_plugins.xla_cuda12"  # jax-cuda12-pjrt's module, found by JAX at start-up
INSTALL = "pip install -r requirements-gpu-aot.txt"

# GpuTargetConfigProto text from XLA's xla/backends/gpu/target_config/specs/h100_sxm.txtpb
# and a100_sxm_80.txtpb, minus the fields jaxlib 0.10.2's proto does not know
# (`collective_memory_granularity`) and whose presence fails the whole parse.
_H100_SXM = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 84942979072 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 feature_extension: ACCELERATED_FEATURES }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
  scalar_unit_description {
    rate_infos { key: 4 value { clock_rate_ghz: 1.98 units_per_core: 64 ops_per_clock: 1 } }
    rate_infos { key: 8 value { clock_rate_ghz: 1.98 units_per_core: 64 ops_per_clock: 1 } }
    rate_infos { key: 10 value { clock_rate_ghz: 1.98 units_per_core: 128 ops_per_clock: 2 } }
    rate_infos { key: 11 value { clock_rate_ghz: 1.98 units_per_core: 128 ops_per_clock: 1 } }
    rate_infos { key: 12 value { clock_rate_ghz: 1.98 units_per_core: 64 ops_per_clock: 1 } }
    rate_infos { key: 16 value { clock_rate_ghz: 1.98 units_per_core: 128 ops_per_clock: 2 } }
  }
  matrix_unit_description {
    rate_infos { key: 2 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 1024 } }
    rate_infos { key: 6 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 1024 } }
    rate_infos { key: 10 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 512 } }
    rate_infos { key: 11 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 256 } }
    rate_infos { key: 12 value { clock_rate_ghz: 1.98 units_per_core: 4 ops_per_clock: 32 } }
    rate_infos { key: 16 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 512 } }
    rate_infos { key: 19 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 1024 } }
    rate_infos { key: 20 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 1024 } }
    rate_infos { key: 23 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 1024 } }
    rate_infos { key: 24 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 1024 } }
    rate_infos { key: 25 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 1024 } }
    rate_infos { key: 28 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 1024 } }
    rate_infos { key: 29 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 1024 } }
    rate_infos { key: 33 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 1024 } }
    rate_infos { key: 35 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 1024 } }
    rate_infos { key: 36 value { clock_rate_ghz: 1.8295201 units_per_core: 4 ops_per_clock: 1024 } }
  }
  thread_dim_limit_x: 1024 thread_dim_limit_y: 1024 thread_dim_limit_z: 64
  device_vendor: "NVIDIA Corporation" platform_version: "Compute Capability 9.0a"
  model_str: "sm_9.0a with 84942979072B RAM, 132 cores, 1980000KHz clock, "
             "2619000KHz mem clock, 52428800B L2$"
  device_address_bits: 64 pcie_bandwidth: 34359738368 ecc_enabled: true
  name: "NVIDIA H100 80GB HBM3" driver_version: "13.0.0" runtime_version: "12.8.0"
  compile_time_toolkit_version: "12.8.0" dnn_version: "9.10.0" cub_version: "3.1.2"
  device_interconnect_info { active_links: 18 }
}
platform_name: "CUDA"
dnn_version_info { major: 8 minor: 9 patch: 4 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

_A100_SXM_80 = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 167936 threads_per_core_limit: 2048 core_count: 108
  fpus_per_core: 64 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 2039040000000 l2_cache_size: 41943040
  clock_rate_ghz: 1.41 device_memory_size: 85100068864 shared_memory_per_block_optin: 166912
  cuda_compute_capability { major: 8 feature_extension: NONE }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536 dnn_version: "8.9.4"
  thread_dim_limit_x: 1024 thread_dim_limit_y: 1024 thread_dim_limit_z: 64
}
platform_name: "CUDA"
dnn_version_info { major: 8 minor: 9 patch: 4 }
device_description_str: "NVIDIA A100-SXM4-80GB"
"""


@dataclasses.dataclass(frozen=True)
class Gpu:
  generation: str
  hbm_gib: float
  peak_bf16_tflops: float
  hbm_gbps: float
  target_config: str


GPUS = {
    "h100": Gpu("H100", 80, 989, 3350, _H100_SXM),
    "a100": Gpu("A100", 80, 312, 2039, _A100_SXM_80),
}


@dataclasses.dataclass(frozen=True)
class Node:
  """`hosts` nodes of 8 GPUs; the fields cli_compile and roofline read match tpu_pods.Pod."""
  name: str
  chip: Gpu
  hosts: int

  @property
  def chips(self) -> int:
    return self.hosts * GPUS_PER_NODE

  @property
  def topology_name(self) -> str:
    """<NVLink domains>x<hosts per domain>x<GPUs per host>: each node is its own NVLink domain."""
    return f"{self.hosts}x1x{GPUS_PER_NODE}"


def parse_node(name: str) -> Node:
  """`h100-16` → Node(H100, 2 hosts)."""
  match = NAME.fullmatch(name.strip().lower())
  if not match or int(match[2]) % GPUS_PER_NODE or not int(match[2]):
    raise UserError(f"--topology {name}: GPU nodes come in multiples of {GPUS_PER_NODE} "
                    f"({match[1] if match else 'h100'}-8, -16, …)")
  return Node(name, GPUS[match[1]], int(match[2]) // GPUS_PER_NODE)


def node_devices(node: Node):
  """The devices of those nodes, from the CUDA plugin, with no GPU attached."""
  from jax.experimental import topologies
  if importlib.util.find_spec(PLUGIN) is None:
    raise UserError(f"--topology {node.name} needs the CUDA plugin: {INSTALL}")
  try:
    topology = topologies.get_topology_desc(platform="cuda", topology=node.topology_name,
                                            target_config=node.chip.target_config)
  except NotImplementedError:
    # Unless JAX is on the CPU platform the plugin looks for a GPU when it starts, fails
    # (here there is none) and then describes no topologies (jax issue 28376).
    raise UserError(f"--topology {node.name}: the CUDA plugin did not start; run with "
                    "JAX_PLATFORMS=cpu") from None
  devices = list(topology.devices)
  if len(devices) != node.chips:
    raise UserError(f"--topology {node.name}: the CUDA plugin gave {len(devices)} devices for "
                    f"{node.chips} GPUs")
  return devices
