"""SANA-1600M backbone (20 × 2240, 70×32 linear heads, 20×112 cross heads), ×4 in DC-AE f32c32.

Shared settings and where they come from: configs/sana_x4.py.
"""

from linearsr_jax.configs.sana_x4 import sana_x4_config


def get_config():
  return sana_x4_config(depth=20, hidden=2240, heads=70, cross_heads=20, cross_head_dim=112)
