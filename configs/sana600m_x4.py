"""SANA-600M backbone (28 × 1152, 36×32 linear heads, 16×72 cross heads), ×4 in DC-AE f32c32.

Shared settings and where they come from: configs/sana_x4.py.
"""

from linearsr_jax.configs.sana_x4 import sana_x4_config


def get_config():
  return sana_x4_config(depth=28, hidden=1152, heads=36, cross_heads=16, cross_head_dim=72)
