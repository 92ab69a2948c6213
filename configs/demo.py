"""The demo's recipe: `linearsr demo` trains it on real photographs in about 25 minutes of a
2-core CPU, giving it three image folders (train, validation, test; see linearsr_jax/demo.py).

The tiny model, trained longer, on a mix of classic bicubic and Real-ESRGAN pairs: a model
trained on heavy degradations alone over-restores a clean LR image, and the demo is scored on
both.
"""

from linearsr_jax.configs.base import stage_config
from linearsr_jax.configs.tiny import get_config as tiny_config


def get_config():
  config = tiny_config()
  config.data.degradation.bicubic_prob = 0.5
  config.data.eval.crop_size = 256
  config.train.eval_every = 100
  config.train.log_every = 100
  config.esgf.combine = "all"
  config.stages.pretrain = stage_config(1, 3000)
  config.stages.moe = stage_config(4, 600, learning_rate=5e-4)
  return config
