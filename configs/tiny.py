"""Tiny config: CPU training in minutes on the embedded photographs; tests use it too.

Pixel-unshuffle ×4 latent space at ×4 SR, so the LR image is already on the latent grid and the
LR stem needs no stride-2 conv.
"""

from configs.base import get_base_config, model_config


def get_config():
  config = get_base_config()
  config.model = model_config(depth=4, hidden=128, heads=4, cross_heads=4, cross_head_dim=32,
                              caption_channels=64, latent_channels=48, lr_channels=16,
                              lr_stem_convs=0, lr_stem_width=32)
  return config
