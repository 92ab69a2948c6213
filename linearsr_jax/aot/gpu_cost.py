"""FLOPs and bytes of an executable compiled for CUDA with no GPU, which XLA:GPU gives no cost
analysis (`compiled.cost_analysis()` is None: "GetCostAnalysis is not supported").

XLA's generic HloCostAnalysis (the CPU client's) reads the optimised per-GPU HLO instead:
Triton GEMM fusions and elementwise work count as on any backend, but library calls count as
unknown (-1). Their work comes from their shapes: a cuDNN convolution of any kind (forward,
backward input, backward filter) does the multiply-adds of its forward convolution,
2·|output|·|filter| / (the filter's output features); a cuBLAS GEMM (what XLA emits for dots
with --xla_gpu_enable_triton_gemm=false) 2·|output|·(contracted size). Each reads its operands
and writes its result.
"""

import math
import re

from linearsr_jax import jax_private
from linearsr_jax.aot.hlo_shapes import DTYPE_BYTES

_DEF = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = \(?(\w+\[[\d,]*\])")
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")
_CUDNN_CONV = re.compile(r"custom-call\(([^)]*)\).*?dim_labels=\w+_(\w+)->\w+.*?"
                         r'custom_call_target="__cudnn\$conv(\w+)"')
_CUBLAS_GEMM = re.compile(r"custom-call\(([^)]*)\).*?"
                          r'custom_call_target="__cublas\$(?:lt\$matmul|gemm)".*?'
                          r'"lhs_contracting_dimensions":\[([^\]]*)\]')


def _dims(shape: str) -> tuple[str, list[int]]:
  dtype, dims = _SHAPE.fullmatch(shape).groups()
  return dtype, [int(d) for d in dims.split(",") if d]


def _bytes(shape: str) -> int:
  dtype, dims = _dims(shape)
  return DTYPE_BYTES.get(dtype, 4) * math.prod(dims)


def library_call_cost(hlo_text: str) -> tuple[float, float]:
  """(FLOPs, bytes accessed) of the cuDNN convolutions and cuBLAS GEMMs in an optimised GPU
  HLO module."""
  shapes, flops, accessed = {}, 0.0, 0.0
  lines = hlo_text.splitlines()
  for line in lines:
    if match := _DEF.match(line):
      shapes[match[1]] = match[2]
  for line in lines:
    conv, gemm = _CUDNN_CONV.search(line), _CUBLAS_GEMM.search(line)
    if not (conv or gemm):
      continue
    operands = [shapes[name.strip().lstrip("%")] for name in (conv or gemm)[1].split(",")]
    result = _DEF.match(line)[2]
    if conv:
      filter_labels, kind = conv[2], conv[3]
      output, kernel = {
          "BackwardInput": (operands[0], operands[1]), "BackwardFilter": (operands[1], result)
      }.get(kind, (result, operands[1]))
      out_features = _dims(kernel)[1][filter_labels.index("o")]
      flops += 2.0 * math.prod(_dims(output)[1]) * math.prod(_dims(kernel)[1]) / out_features
    else:
      lhs = _dims(operands[0])[1]
      contracted = math.prod(lhs[int(d.strip('"'))] for d in gemm[2].split(",") if d)
      flops += 2.0 * math.prod(_dims(result)[1]) * contracted
    accessed += sum(map(_bytes, operands)) + _bytes(result)
  return flops, accessed


def cost_analysis(compiled) -> dict:
  """{"flops", "bytes accessed"} per GPU, as `compiled.cost_analysis()` gives them elsewhere."""
  cost = {"flops": 0.0, "bytes accessed": 0.0}
  for module in compiled.runtime_executable().hlo_modules():
    generic = jax_private.hlo_module_cost(module)
    library_flops, library_bytes = library_call_cost(module.to_string())
    cost["flops"] += generic.get("flops", 0.0) + library_flops
    cost["bytes accessed"] += generic.get("bytes accessed", 0.0) + library_bytes
  return cost
