"""The demo's recipe: `linearsr demo` trains it on real photographs on a 2-core CPU, giving it
three image folders (train, validation, test; see linearsr_jax/demo.py).

The tiny model, measured on the demo's photographs (the experiments are in the README's demo
section):
- two sampler steps: at the knee, one step gives the best PSNR and four the best LPIPS; two are
  close to both, and use two experts;
- σ drawn near the source end (logit-normal mean 2): with the flow anchored at the LR image, the
  few steps the sampler takes are all at high σ, where logit-normal(0, 1) rarely trains;
- a mix of classic bicubic and Real-ESRGAN pairs: the demo is scored on both, and a model
  trained on heavy degradations alone over-restores a clean LR image;
- validation every 50 steps: the curves peak after a few hundred steps and then turn back
  (the model starts to paint grain), which is the knee ESGF is there to find.
"""

from linearsr_jax.configs.base import stage_config
from linearsr_jax.configs.tiny import get_config as tiny_config


def get_config():
  config = tiny_config()
  config.data.degradation.bicubic_prob = 0.5
  config.data.eval.crop_size = 256
  config.diffusion.logit_mean = 2.0
  config.diffusion.sampler.steps = 2
  config.optimizer.learning_rate = 1e-3
  config.train.eval_steps = 2
  config.train.eval_every = 50
  config.train.log_every = 50
  config.esgf.combine = "all"
  config.stages.pretrain = stage_config(1, 1000)
  config.stages.moe = stage_config(4, 400, learning_rate=2.5e-4)
  return config
