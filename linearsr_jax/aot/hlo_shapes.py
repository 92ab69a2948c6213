"""Bytes per element of the HLO element types, for sizing the shapes in HLO text (collectives in
hlo_stats.py, kernels in hlo_costs.py, library calls in gpu_cost.py), and what the three read
alike in that text."""

import re

DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
    "u32": 4, "f64": 8, "s64": 8, "u64": 8
}

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
OP_NAME = re.compile(r'op_name="([^"]*)"')  # the JAX op an instruction came from
# The header line of a computation: its name, and whether it is the entry.
COMPUTATION = re.compile(r"^(?P<entry>ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*\(")
