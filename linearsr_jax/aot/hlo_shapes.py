"""Bytes per element of the HLO element types, for sizing the shapes in HLO text (collectives in
hlo_stats.py, library calls in gpu_cost.py)."""

DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
    "u32": 4, "f64": 8, "s64": 8, "u64": 8
}
