"""What a compiled executable costs per chip: XLA's cost and memory analyses and the
collectives in its HLO.

XLA's cost analysis (and the HLO text) holds a `while` body once, so a model that scans its
blocks is undercounted; `scan_corrected` adds the missing repeats from two unrolled compiles.
"""

import re

import numpy as np

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")
_OP = re.compile(r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")


def _shape_bytes(text: str) -> int:
  return sum(_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
             for dtype, dims in _SHAPE.findall(text))


def collectives(hlo_text: str) -> dict:
  """{kind: bytes of its results}, from an optimised HLO module's text. An async '-start'
  returns (operands, result): only the result, its last shape, is counted."""
  out = {kind: 0 for kind in COLLECTIVES}
  for line in hlo_text.splitlines():
    match = _OP.search(line)
    if not match:
      continue
    shapes, kind, started = match.groups()
    if started:
      found = _SHAPE.findall(shapes)
      shapes = f"{found[-1][0]}[{found[-1][1]}]" if found else ""
    out[kind] += _shape_bytes(shapes)
  return out


def stats(compiled) -> dict:
  """Per-chip numbers of one compiled executable: FLOPs, bytes accessed, memory, collectives."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  result = {"flops": float(cost.get("flops", 0.0)),
            "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
            "memory": {"arguments": memory.argument_size_in_bytes,
                       "outputs": memory.output_size_in_bytes,
                       "temporaries": memory.temp_size_in_bytes,
                       "aliased": memory.alias_size_in_bytes,
                       "generated_code": memory.generated_code_size_in_bytes}}
  result["memory"]["total"] = (memory.argument_size_in_bytes + memory.output_size_in_bytes +
                               memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  result["collectives"] = collectives(compiled.as_text())
  return result


def scan_corrected(scanned: dict, one: dict, two: dict, depth: int) -> dict:
  """FLOPs, bytes and collectives of `scanned` (blocks in a scan, its body counted once) with
  the other depth − 1 blocks added; one block's share is the difference between unrolled
  compiles of depth 1 and 2."""
  def add(a, b1, b2):
    return a + (depth - 1) * max(b2 - b1, 0)

  return dict(scanned,
              flops=add(scanned["flops"], one["flops"], two["flops"]),
              bytes_accessed=add(scanned["bytes_accessed"], one["bytes_accessed"],
                                 two["bytes_accessed"]),
              collectives={k: add(v, one["collectives"][k], two["collectives"][k])
                           for k, v in scanned["collectives"].items()})
