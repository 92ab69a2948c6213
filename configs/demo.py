"""The demo's recipe: `linearsr demo` trains it on real photographs on a 2-core CPU, giving it
three image folders (train, validation, test; see linearsr_jax/commands/demo.py).

The tiny model, measured on the validation photographs (rocket, motorcycle; the runs are in the
README's demo section):
- the flow starts at the bicubic-upsampled LR image with no source noise, and half the training
  draws are at σ = 1 itself (diffusion.source_prob): there the model learns the conditional
  mean given the LR image, which the sampler's first step returns. With source noise 0.02 and no
  such draws the output grew grain and PSNR fell back to bicubic's after 250 steps; with them,
  bicubic-only training climbed to +0.59 dB over bicubic by step 1000 and stayed there;
- a milder degradation than Real-ESRGAN's second-order one: first-order noise and JPEG without
  blur, mixed with 80 % classic bicubic pairs. The model cannot tell a clean LR image from a
  blurred one at this size, and learns to sharpen both: with Real-ESRGAN pairs half the time
  it fell 0.6 dB below bicubic on clean input, with first-order blur 0.07 dB;
- two sampler steps, σ drawn near the source end (logit-normal mean 2), validation every 50
  steps.
"""

from linearsr_jax.configs.base import stage_config
from linearsr_jax.configs.tiny import get_config as tiny_config


def get_config():
  config = tiny_config()
  degradation = config.data.degradation
  degradation.mode = "first_order"
  degradation.bicubic_prob = 0.8
  degradation.pass1.update(blur_prob=0.0, noise_range=(1.0, 10.0), poisson_scale_range=(0.05, 1.0),
                           jpeg_range=(60, 95))
  config.data.eval.crop_size = 256
  config.diffusion.lr_source_noise = 0.0
  config.diffusion.source_prob = 0.5
  config.diffusion.logit_mean = 2.0
  config.diffusion.sampler.steps = 2
  config.optimizer.learning_rate = 1e-3
  config.train.eval_steps = 2
  config.train.eval_every = 50
  config.train.log_every = 50
  config.esgf.combine = "all"
  config.stages.pretrain = stage_config(1, 2000)
  config.stages.moe = stage_config(4, 400, learning_rate=2.5e-4)
  return config
