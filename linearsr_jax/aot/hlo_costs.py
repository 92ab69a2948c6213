"""Where a compiled step's FLOPs and bytes go: each instruction of an optimised HLO module
costed from its shapes and put in a kind (matmul, convolution, elementwise, …).

XLA's cost analysis gives totals only. Here every instruction a program runs (those of its
entry, `while` bodies and branches; a fusion as one kernel) reads its operands and writes its
result, in the layout it has in memory (TPU tiles pad the minor dimensions: a bf16[4,256,16]
takes as many bytes as a bf16[4,256,128]); a fusion's operand read only through slices counts
the slices; an async copy counts at its start and at its done, as XLA counts it; a result
written in place of an operand counts as neither. That adds up to XLA's totals (within 1–2 %
on SANA-600M's train step on v5e-16, 3 % on the QUARTER test config: tests/aot). Bytes in an
on-chip memory space (a TPU core's VMEM, `S(1)` in the layout) are counted, as XLA counts them,
and also apart: they are not HBM traffic, which is what a roofline's memory bound is about.

FLOPs are 2 per multiply-add of dots and convolutions (the taps that read input: XLA:TPU writes
a batched dot as a convolution over dilated windows) and one per element of elementwise
operations and reductions. A custom call (a Pallas kernel) counts a matmul's where its shapes
are one's, else what its kernel declares, else one per output element: never nothing.

Kinds, by the heaviest operation in the kernel and the JAX op it came from (`op_name`):
"matmul" (a dot, or a convolution from dot_general: XLA:TPU writes dots as convolutions),
"convolution" (from conv_general_dilated: the Mix-FFN's depthwise convolution, the stems),
"elementwise" (fusions of elementwise work and reductions: normalisations, activations, the
loss), "update" (the optimizer, EMA and skip guard: train/step.py's `update` scope),
"collective", "copy" (copies, transposes and async slices: layout changes, HBM↔on-chip moves),
"custom" (custom calls) and "other" (slices, pads, concatenations, RNG, …).
"""

import dataclasses
import math
import re

from linearsr_jax.aot.hlo_shapes import COLLECTIVES, COMPUTATION, DTYPE_BYTES, OP_NAME

KINDS = ("matmul", "convolution", "elementwise", "update", "collective", "copy", "custom", "other")
UPDATE_SCOPE = "update"  # the named scope train/step.py gives the optimizer update and EMA

_COLLECTIVES = (*COLLECTIVES, "collective-broadcast", "ragged-all-to-all")
_FREE = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional",
    "call", "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency", "iota",
    "domain"
}
_ELEMENTWISE = {
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "sign",
    "compare", "select", "and", "or", "xor", "not", "power", "remainder", "clamp", "floor", "ceil",
    "round-nearest-even", "round-nearest-afz", "exponential", "exponential-minus-one", "log",
    "log-plus-one", "sqrt", "rsqrt", "cbrt", "tanh", "logistic", "sine", "cosine", "tan", "atan2",
    "erf", "is-finite", "shift-left", "shift-right-logical", "shift-right-arithmetic", "popcnt",
    "count-leading-zeros", "reduce-precision", "real", "imag", "complex", "convert"
}
_SLICES = {"slice", "dynamic-slice", "gather"}
# XLA:TPU's concatenation of arrays already adjacent in memory: moves nothing.
_BITCAST_CALL = re.compile(r'custom_call_target="\w*Bitcast"')
_CARRIED = {"parameter", "tuple", "get-tuple-element", "bitcast", "custom-call", "copy", "constant"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*")
_ARRAY = re.compile(r"(" + "|".join(DTYPE_BYTES) + r"|token)\[([\d,]*)\](?:\{([^}]*)\})?")
_CALLED = re.compile(r"\b(calls|to_apply|body|condition|branch_computations)=\{?([%\w.\-, ]+)\}?")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_COST_ESTIMATE = re.compile(r'\\?"cost_estimate\\?":\s*\{([^}]*)\}')
_TILE = re.compile(r":T\(([\d,]+)\)")
_ON_CHIP = re.compile(r"S\([1-9]\d*\)")
_ALIASED = re.compile(r"\{(\d*)\}: \((\d+), \{\}\)")  # {output index}: (operand, {})


def _balanced(text: str, start: int) -> int:
  """The index just past the bracket group opening at text[start]."""
  depth = 0
  for i in range(start, len(text)):
    depth += {"(": 1, "{": 1, "[": 1, ")": -1, "}": -1, "]": -1}.get(text[i], 0)
    if depth == 0:
      return i + 1
  return len(text)


def array_bytes(dtype: str, dims: str, layout: str | None) -> int:
  """Bytes of one array in memory: its elements, the minor dimensions padded to the layout's
  first tile (`{1,0:T(8,128)}`: dimension 1 to a multiple of 128, then 0 to one of 8)."""
  shape = [int(d) for d in dims.split(",") if d]
  if layout and (tile := _TILE.search(layout)) and shape:
    order = [int(d) for d in layout.split(":")[0].split(",") if d]  # minor to major
    for size, dim in zip(reversed([int(t) for t in tile[1].split(",")]), order):
      shape[dim] = -(-shape[dim] // size) * size
  return DTYPE_BYTES.get(dtype, 0) * math.prod(shape)


def _type_bytes(text: str, on_chip: bool = False) -> int:
  """Bytes of a type's arrays; `on_chip`: of those in a memory space other than HBM's (S(1) is
  a TPU core's VMEM)."""
  return sum(
      array_bytes(*a) for a in _ARRAY.findall(text) if not on_chip or _ON_CHIP.search(a[2] or ""))


def _elements(text: str) -> int:
  """Elements of the first array of a type: an instruction's result."""
  match = _ARRAY.search(text)
  return math.prod(int(d) for d in match[2].split(",") if d) if match else 0


def _dims(text: str) -> list:
  match = _ARRAY.search(text)
  return [int(d) for d in match[2].split(",") if d] if match else []


class Instruction:
  """One HLO instruction: its result type, opcode, operand names and attributes."""

  def __init__(self, line: str):
    match = _INSTRUCTION.match(line)
    self.name, rest = match[1], line[match.end():]
    end = _balanced(rest, 0) if rest.startswith("(") else rest.index(" ")
    self.type, rest = rest[:end], rest[end:].lstrip()
    paren = rest.index("(")
    self.opcode = rest[:paren]
    close = _balanced(rest, paren)
    self.arguments = rest[paren + 1:close - 1]
    self.operands = re.findall(r"%([\w.\-]+)", self.arguments)
    self.attributes = rest[close:]
    op_name = OP_NAME.search(self.attributes)
    self.op_name = op_name[1] if op_name else ""
    self.called = [
        name.strip().lstrip("%")
        for _, names in _CALLED.findall(self.attributes)
        for name in names.split(",")
        if name.strip()
    ]


class Module:
  """An optimised HLO module's computations, parsed from its text."""

  def __init__(self, hlo_text: str):
    self.computations, self.entry, current = {}, None, None
    for line in hlo_text.splitlines():
      if not line.startswith(" ") and (match := COMPUTATION.match(line)):
        current = self.computations.setdefault(match["name"], [])
        self.entry = match["name"] if match["entry"] else self.entry
      elif current is not None and _INSTRUCTION.match(line):
        current.append(Instruction(line))
    self.types = {i.name: i.type for body in self.computations.values() for i in body}

  def run_computations(self) -> list:
    """Names of the computations whose instructions run as kernels: the entry and the bodies,
    conditions and branches of its control flow (not fused computations, nor reducers)."""
    found, todo = [], [self.entry]
    while todo:
      name = todo.pop()
      if name in found or name not in self.computations:
        continue
      found.append(name)
      for i in self.computations[name]:
        if i.opcode in ("while", "conditional", "call"):
          todo.extend(i.called)
    return found

  def operand_type(self, name: str) -> str:
    return self.types.get(name, "")


def _dot_flops(module: Module, i: Instruction) -> float:
  contracted = _CONTRACTING.search(i.attributes)
  lhs = _dims(module.operand_type(i.operands[0]))
  k = math.prod(lhs[int(d)] for d in contracted[1].split(",") if d) if contracted else 1
  return 2.0 * _elements(i.type) * k


def _window(attributes: str, key: str, spatial: int, default: int) -> list:
  match = re.search(r"\b" + key + r"=([\dx_\-]+)", attributes)
  return [int(v) for v in match[1].split("x")] if match else [default] * spatial


def _valid_taps(size: int, window: int, out: int, stride: int, low: int, lhs: int, rhs: int) -> int:
  """(output position, window tap) pairs of one spatial dimension that land on an input element,
  not on padding nor between dilated elements."""
  last = (size - 1) * lhs
  return sum(1 for o in range(out) for k in range(window)
             if 0 <= (pos := o * stride + k * rhs - low) <= last and pos % lhs == 0)


def _convolution_flops(module: Module, i: Instruction) -> float:
  """2 per multiply-add of the taps that read input (XLA's count): XLA:TPU writes a batched dot
  as a convolution whose batch dimensions are dilated windows, one tap of which is real."""
  lhs, kernel = (_dims(module.operand_type(o)) for o in i.operands[:2])
  out = _dims(i.type)
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", i.attributes)
  if not labels:
    return 2.0 * _elements(i.type) * math.prod(kernel) / max(kernel[-1], 1)
  lhs_l, kernel_l, out_l = labels.groups()
  spatial = sorted(c for c in kernel_l if c.isdigit())
  size = _window(i.attributes, "size", len(spatial), 1)
  stride = _window(i.attributes, "stride", len(spatial), 1)
  lhs_dilate = _window(i.attributes, "lhs_dilate", len(spatial), 1)
  rhs_dilate = _window(i.attributes, "rhs_dilate", len(spatial), 1)
  pad = re.search(r"\bpad=([\d_x\-]+)", i.attributes)
  low = [int(p.split("_")[0]) for p in pad[1].split("x")] if pad else [0] * len(spatial)
  taps = math.prod(
      _valid_taps(lhs[lhs_l.index(d)], size[n], out[out_l.index(d)], stride[n], low[n],
                  lhs_dilate[n], rhs_dilate[n]) for n, d in enumerate(spatial))
  return 2.0 * taps * out[out_l.index("b")] * out[out_l.index("f")] * kernel[kernel_l.index("i")]


def _fused_flops(module: Module, computation: str) -> tuple[float, float, str]:
  """(FLOPs, matmul/convolution FLOPs, the op_name of its largest dot or convolution) of a
  fused computation, nested fusions included."""
  flops, heavy, heavy_name = 0.0, 0.0, ""
  for i in module.computations.get(computation, []):
    if i.opcode == "fusion":
      f, h, n = _fused_flops(module, i.called[0])
      flops, heavy = flops + f, heavy + h
      heavy_name = n if h > 0 and not heavy_name else heavy_name
      continue
    f = {"dot": _dot_flops, "convolution": _convolution_flops}.get(i.opcode)
    if f:
      cost = f(module, i)
      if cost > heavy:
        heavy_name = i.op_name
      flops, heavy = flops + cost, heavy + cost
    else:
      flops += _op_flops(module, i)
  return flops, heavy, heavy_name


def _op_flops(module: Module, i: Instruction) -> float:
  """One FLOP per element of an elementwise operation, per element reduced of a reduction."""
  if i.opcode in _ELEMENTWISE:
    return float(_elements(i.type))
  if i.opcode in ("reduce", "reduce-window"):
    return float(sum(_elements(module.operand_type(o)) for o in i.operands[:len(i.operands) // 2]))
  return 0.0


def _fusion_bytes(module: Module, i: Instruction, on_chip: bool) -> int:
  """A fusion's bytes: its result and its operands, or only the slices the kernel reads of an
  operand it reads only through slices. A result updated in place of an operand
  (output_to_operand_aliasing: an in-place update, or the state of a TPU async collective that a
  compute fusion carries along) counts as neither, as XLA counts it."""
  body = module.computations.get(i.called[0], [])
  users = {}
  for user in body:
    for name in user.operands:
      users.setdefault(name, []).append(user)
  aliased = _ALIASED.findall(i.attributes.split("calls=")[0])
  in_place = {int(operand) for _, operand in aliased}
  # {}: the whole (array) result; {n}: the n-th of a tuple's.
  outputs = [
      a for n, a in enumerate(_ARRAY.findall(i.type))
      if str(n) not in dict(aliased) and "" not in dict(aliased)
  ]
  total = sum(array_bytes(*a) for a in outputs if not on_chip or _ON_CHIP.search(a[2] or ""))
  for p in (p for p in body if p.opcode == "parameter"):
    index = int(p.arguments)
    read, operand = users.get(p.name, []), module.operand_type(i.operands[index])
    if index in in_place:
      continue
    if read and all(u.opcode in _SLICES and u.operands[0] == p.name for u in read):
      # The slices are in the kernel: in the memory space of the operand they read.
      total += sum(_type_bytes(u.type) for u in read) if _type_bytes(operand, on_chip) else 0
    else:
      total += _type_bytes(operand, on_chip)
  return total


def _result_bytes(i: Instruction, on_chip: bool) -> int:
  """What an instruction writes: an async start's result is (operands, result[, context]), a
  copy-start's (destination, source, context)."""
  if not i.opcode.endswith("-start"):
    return _type_bytes(i.type, on_chip)
  arrays = [a for a in _ARRAY.findall(i.type) if a[1]]
  chosen = arrays[0] if i.opcode == "copy-start" else arrays[-1]
  return array_bytes(*chosen) if arrays and (not on_chip or _ON_CHIP.search(chosen[2] or "")) else 0


def _bytes(module: Module, i: Instruction, on_chip: bool = False) -> int:
  """Bytes an instruction reads and writes. XLA counts an async copy at its start and again at
  its done (each reads and writes the copied array): so does this, to add up to its totals."""
  if i.opcode == "fusion":
    return _fusion_bytes(module, i, on_chip)
  if i.opcode == "copy-done":
    return 2 * _type_bytes(i.type, on_chip)
  if i.opcode in ("slice", "slice-start"):  # reads only what it keeps
    return 2 * _result_bytes(i, on_chip)
  return sum(_type_bytes(module.operand_type(o), on_chip) for o in i.operands) + _result_bytes(
      i, on_chip)


def _custom_call_flops(module: Module, i: Instruction) -> float:
  """A custom call's FLOPs: a matmul's where its shapes are one's ([…, M, K] · […, K, N] ->
  […, M, N]), else what its kernel declares (a Pallas kernel's CostEstimate), else one per
  output element."""
  shapes = [_dims(module.operand_type(o)) for o in i.operands]
  out = _dims(i.type)
  if len(shapes) == 2 and min(len(shapes[0]), len(shapes[1]), len(out)) >= 2:
    (m, k), (k2, n) = shapes[0][-2:], shapes[1][-2:]
    if k == k2 and out[-2:] == [m, n]:
      return 2.0 * math.prod(out) * k
  estimate = _COST_ESTIMATE.search(i.attributes)
  declared = estimate and re.search(r'flops\\?":\s*\\?"?(\d+)', estimate[1])
  return float(declared[1]) if declared and int(declared[1]) else float(_elements(i.type))


def _is_collective(opcode: str) -> bool:
  return opcode.removesuffix("-start") in _COLLECTIVES


def _kind(module: Module, i: Instruction, heavy: float, heavy_name: str) -> str:
  body = module.computations.get(i.called[0], []) if i.opcode == "fusion" else []
  # A TPU async collective starts in a fusion of its own; the compute fusions that advance it
  # carry it along, and are the kind of their compute.
  compute = {b.opcode for b in body if not _is_collective(b.opcode)} - _CARRIED
  if _is_collective(i.opcode) or any(_is_collective(b.opcode) for b in body) and not compute:
    return "collective"
  if UPDATE_SCOPE in i.op_name.split("/"):
    return "update"
  if i.opcode == "custom-call":
    return "custom"
  if heavy > 0:
    return "convolution" if "conv_general_dilated" in heavy_name else "matmul"
  if i.opcode in ("copy", "copy-start", "copy-done", "slice-start", "transpose") or body and all(
      b.opcode in ("parameter", "copy", "transpose", "bitcast", "tuple") for b in body):
    return "copy"
  if i.opcode == "fusion" or i.opcode in _ELEMENTWISE or i.opcode == "reduce":
    return "elementwise"
  return "other"


@dataclasses.dataclass(frozen=True)
class Kernel:
  kind: str
  flops: float
  bytes: float  # read and written, in whichever memory
  on_chip_bytes: float  # of which in on-chip memory (a TPU's VMEM): not HBM traffic
  op_name: str


def kernels(hlo_text: str) -> list:
  """The Kernels an optimised HLO module runs (a `while` body's once)."""
  module, out = Module(hlo_text), []
  for computation in module.run_computations():
    for i in module.computations[computation]:
      if i.opcode in _FREE or (i.opcode.endswith("-done") and
                               i.opcode != "copy-done") or _BITCAST_CALL.search(i.attributes):
        continue
      heavy, heavy_name = 0.0, i.op_name
      if i.opcode == "fusion":
        flops, heavy, heavy_name = _fused_flops(module, i.called[0])
      elif i.opcode in ("dot", "convolution"):
        heavy = flops = (_dot_flops if i.opcode == "dot" else _convolution_flops)(module, i)
      elif i.opcode == "custom-call":
        flops = _custom_call_flops(module, i)
      else:
        flops = _op_flops(module, i)
      out.append(
          Kernel(_kind(module, i, heavy, heavy_name), flops, float(_bytes(module, i)),
                 float(_bytes(module, i, on_chip=True)), i.op_name))
  return out


def by_kind(hlo_text: str) -> dict:
  """{kind: {"flops", "bytes", "on_chip_bytes"}} of an optimised HLO module (see `kernels`)."""
  out = {kind: {"flops": 0.0, "bytes": 0.0, "on_chip_bytes": 0.0} for kind in KINDS}
  for k in kernels(hlo_text):
    for field in ("flops", "bytes", "on_chip_bytes"):
      out[k.kind][field] += getattr(k, field)
  return out
