"""`--dtype bfloat16`: the model's matmuls in bfloat16, its norms and attention normaliser in
float32, give nearly the float32 image (not a black or NaN one)."""

import numpy as np
import pytest
import skimage
from PIL import Image

from linearsr_jax.errors import UserError
from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler
from model_helpers import random_trained


@pytest.mark.slow  # two sampler compiles: 10-20 s on a busy CPU
def test_bfloat16_output_is_close_to_float32():
  lr = skimage.transform.resize(skimage.data.coffee(), (32, 32),
                                anti_aliasing=True).astype(np.float32)
  options = UpscaleOptions(tile=32, overlap=8, color_fix="none")
  trained = random_trained(scale=0.05)
  f32 = Upscaler(trained, options)(lr)
  bf16 = Upscaler(trained.computing_in("bfloat16"), options)(lr)
  bicubic = np.dstack([
      np.asarray(Image.fromarray(lr[..., c], "F").resize((128, 128), Image.Resampling.BICUBIC))
      for c in range(3)
  ])
  assert np.abs(f32 - bicubic).mean() > 0.05  # the model changes the image a lot ...
  error = np.abs(bf16 - f32)
  # ... and bfloat16 (8 bits of mantissa: 4e-3 relative) moves it little: measured mean 5e-4,
  # max 4e-3 on this model; a black or NaN image would be off by ~0.4
  assert np.isfinite(bf16).all() and error.mean() < 2e-3 and error.max() < 2e-2
  assert error.mean() > 1e-5  # it did compute in bfloat16


def test_an_unknown_dtype_is_one_line():
  with pytest.raises(UserError, match="--dtype float8: choose from float32, bfloat16, float16"):
    random_trained().computing_in("float8")
