"""SANA-600M backbone (28 × 1152, 36×32 linear heads, 16×72 cross heads) at ×4 in DC-AE f32c32.

LR 128 px -> HR 512 px -> latent 16×16; the LR stem needs log2(32 / 4) = 3 stride-2 convs.
"""

from configs.base import get_base_config, model_config


def get_config():
  config = get_base_config()
  config.model = model_config(depth=28, hidden=1152, heads=36, cross_heads=16, cross_head_dim=72,
                              caption_channels=2304, latent_channels=32, lr_channels=32,
                              lr_stem_convs=3, lr_stem_width=128, remat="full", dtype="bfloat16")
  config.mesh.fsdp = -1
  config.mesh.data = 1
  return config
