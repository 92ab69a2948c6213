"""SANA-1600M backbone (20 × 2240, 70×32 linear heads, 20×112 cross heads) at ×4 in DC-AE f32c32."""

from configs.base import get_base_config, model_config


def get_config():
  config = get_base_config()
  config.model = model_config(depth=20, hidden=2240, heads=70, cross_heads=20, cross_head_dim=112,
                              caption_channels=2304, latent_channels=32, lr_channels=32,
                              lr_stem_convs=3, lr_stem_width=128, remat="full", dtype="bfloat16")
  config.mesh.fsdp = -1
  config.mesh.data = 1
  return config
