"""What a compiled executable costs per chip: XLA's cost and memory analyses and the
collectives in its HLO.

XLA's cost analysis (and the HLO text) holds a `while` body once, so a model that scans its
blocks, or a matmul XLA:TPU splits into a loop over FSDP shards, is undercounted;
`extrapolated` counts a whole model from two unrolled compiles without such loops
(step_compile.py).
"""

import dataclasses
import math
import re

import numpy as np

from linearsr_jax.aot import hlo_costs
from linearsr_jax.aot.hlo_shapes import COLLECTIVES, COMPUTATION, DTYPE_BYTES, OP_NAME

_SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_OP = re.compile(r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
# TPU async collectives: the op is repeated, same channel, in every fusion that advances it
# ("continuations", flag_start >= 0); only the one that starts it (flag_start -1) moves data.
_CONTINUATION = re.compile(r'"async_collective_fusion_config":\{"flag_start":"(\d+)"')
_EXPLICIT_GROUP = re.compile(r"replica_groups=\{\{([\d,]*)\}")
_IOTA_GROUPS = re.compile(r"replica_groups=\[\d+,(\d+)\]<=")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")


@dataclasses.dataclass(frozen=True)
class CollectiveOp:
  kind: str
  bytes_by_dtype: dict  # {dtype: bytes} of the full (unsharded over the group) tensors
  op_name: str  # the JAX op it came from, e.g. '.../blocks_0/ff/conv_inverted/dot_general'

  @property
  def bytes(self) -> int:
    return sum(self.bytes_by_dtype.values())


def _bytes_by_dtype(text: str, scale: int = 1) -> dict:
  out = {}
  for dtype, dims in _SHAPE.findall(text):
    size = DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d])) * scale
    out[dtype] = out.get(dtype, 0) + size
  return out


def _group_size(line: str) -> int:
  """Devices per replica group ({{0,1,..}}, [groups,size]<=[n] or mesh[...] {axes}); 1 unknown."""
  if match := _EXPLICIT_GROUP.search(line):
    return len([d for d in match[1].split(",") if d])
  if match := _IOTA_GROUPS.search(line):
    return int(match[1])
  if match := _MESH_GROUPS.search(line):
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", match[1]))
    return math.prod(int(sizes.get(a, 1)) for a in re.findall(r"'(\w+)'", match[2]))
  return 1


def collective_ops(hlo_text: str) -> list:
  """Every collective an optimised HLO module runs (a `while` body's once), as CollectiveOps.

  Bytes are the full tensor each chip's share is part of: an all-gather's result, a
  reduce-scatter's operand, an all-reduce's result. That is what a chip sends and receives,
  up to (n - 1) / n of a ring. TPU writes a reduce-scatter as an all-reduce and a dynamic slice
  in an `all-reduce-scatter` fusion; it is counted as the reduce-scatter it is. An async
  '-start' returns (operands, result): only the result, its last shape, is counted.
  """
  ops, computation = [], ""
  for line in hlo_text.splitlines():
    if not line.startswith(" ") and (match := COMPUTATION.match(line)):
      computation = match["name"]
      continue
    match = _OP.search(line)
    if not match or _CONTINUATION.search(line):
      continue
    shapes, kind, started = match.groups()
    if started:
      found = _SHAPE.findall(shapes)
      shapes = f"{found[-1][0]}[{found[-1][1]}]" if found else ""
    scale = 1
    if kind == "reduce-scatter":
      scale = _group_size(line)
    elif kind == "all-reduce" and computation.startswith("all-reduce-scatter"):
      kind = "reduce-scatter"
    name = OP_NAME.search(line)
    ops.append(CollectiveOp(kind, _bytes_by_dtype(shapes, scale), name[1] if name else ""))
  return ops


def collectives(hlo_text: str) -> dict:
  """{kind: bytes} per chip, from an optimised HLO module's text (see `collective_ops`)."""
  out = {kind: 0 for kind in COLLECTIVES}
  for op in collective_ops(hlo_text):
    out[op.kind] += op.bytes
  return out


def collectives_by_dtype(hlo_text: str) -> dict:
  """{kind: {dtype: bytes}} per chip: whether params are gathered, and gradients reduced, in
  float32 or in the compute dtype."""
  out = {kind: {} for kind in COLLECTIVES}
  for op in collective_ops(hlo_text):
    for dtype, size in op.bytes_by_dtype.items():
      out[op.kind][dtype] = out[op.kind].get(dtype, 0) + size
  return out


def stats(compiled) -> dict:
  """Per-chip numbers of one compiled executable: FLOPs, bytes accessed, memory, collectives,
  and FLOPs and bytes by kind of kernel (hlo_costs.by_kind)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost is None:  # compiled for CUDA with no GPU: XLA:GPU has no cost analysis for it
    from linearsr_jax.aot import gpu_cost
    cost = gpu_cost.cost_analysis(compiled)
  memory = compiled.memory_analysis()
  result = {
      "flops": float(cost.get("flops", 0.0)),
      "bytes_accessed": float(cost.get("bytes accessed", 0.0)), "memory": {
          "arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
          "temporaries": memory.temp_size_in_bytes, "aliased": memory.alias_size_in_bytes,
          "generated_code": memory.generated_code_size_in_bytes
      }
  }
  result["memory"]["total"] = (memory.argument_size_in_bytes + memory.output_size_in_bytes +
                               memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  text = compiled.as_text()
  result["collectives"] = collectives(text)
  result["collectives_by_dtype"] = collectives_by_dtype(text)
  result["by_kind"] = hlo_costs.by_kind(text)
  return result


COUNTED = ("flops", "bytes_accessed", "collectives", "collectives_by_dtype", "by_kind")


def _combine(a: dict, b: dict, fn) -> dict:
  """COUNTED of `a` and `b` combined number by number with fn(x, y)."""

  def nested(x: dict, y: dict) -> dict:
    return {
        k: nested(x.get(k, {}), y.get(k, {})) if isinstance(x.get(k, y.get(k)), dict) else fn(
            x.get(k, 0), y.get(k, 0)) for k in x.keys() | y.keys()
    }

  return nested({k: a[k] for k in COUNTED}, {k: b[k] for k in COUNTED})


def extrapolated(one: dict, two: dict, depth: int) -> dict:
  """COUNTED of a model of `depth` blocks from programs of 1 and 2 (unrolled): one block adds
  two − one."""
  return _combine(one, two, lambda x, y: x + (depth - 1) * max(y - x, 0))


def block_and_rest(one: dict, two: dict) -> dict:
  """{"block": what one block adds (two − one), "rest": the rest (one − block)} of the `by_kind`
  of programs of 1 and 2 (unrolled) blocks, as `extrapolated` counts them."""
  block = _combine(one, two, lambda x, y: max(y - x, 0))["by_kind"]
  rest = _combine(one, two, lambda x, y: x - max(y - x, 0))["by_kind"]
  return {"block": block, "rest": rest}


def added(a: dict, b: dict) -> dict:
  """COUNTED of two programs run one after the other."""
  return _combine(a, b, lambda x, y: x + y)


def repeated(a: dict, times: int) -> dict:
  """COUNTED of a program run `times` times over."""
  return _combine(a, a, lambda x, _: times * x)
