"""Tiny config: CPU training in minutes on the embedded photographs; tests and the demo use it.

Pixel-unshuffle ×4 latent space at ×4 SR, so the LR image is already on the latent grid and the
LR stem needs no stride-2 conv. The flow starts from the upsampled LR image (diffusion.source
= 'lr'), so an untrained model already outputs roughly bicubic.
"""

from linearsr_jax.configs.base import get_base_config, model_config, stage_config


def get_config():
  config = get_base_config()
  config.model = model_config(depth=4, hidden=128, heads=4, cross_heads=4, cross_head_dim=32,
                              caption_channels=64, latent_channels=48, lr_channels=16,
                              lr_stem_convs=0, lr_stem_width=32)
  config.latent.kind = "pixel"
  config.latent.factor = 4
  config.model.scan_layers = False  # 4 blocks: unrolled compiles fast and runs faster on CPU
  config.data.crop_size = 64
  config.data.batch_size = 8
  config.data.eval.crop_size = 128
  config.data.eval.batch_size = 2
  config.diffusion.source = "lr"
  # A light source noise: at this size the model cannot learn to remove σ_s = 0.1 in time,
  # and it shows as grain; 0.02 keeps the start point at bicubic quality.
  config.diffusion.lr_source_noise = 0.02
  config.diffusion.sampler.steps = 4
  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 20
  config.optimizer.ema_decay = 0.99
  config.train.eval_every = 25
  config.train.eval_steps = 4
  config.train.log_every = 25
  # At this size validation PSNR peaks and turns back while LPIPS still improves: stop at the
  # first metric that confirms a knee.
  config.esgf.combine = "any"
  config.esgf.min_points = 6
  config.esgf.patience = 4
  config.stage_order = "pretrain,moe"
  config.stages.pretrain = stage_config(1, 1500)
  config.stages.moe = stage_config(4, 300, learning_rate=5e-4)
  config.stages.distill = stage_config(1, 300, kind="distill", learning_rate=5e-4)
  return config
