"""Tiles batched over the 8 fake CPU devices (conftest.py) give the one-device image."""

import numpy as np
import pytest
import skimage

from linearsr_jax.errors import UserError
from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler
from model_helpers import random_trained


@pytest.mark.slow  # two sampler compiles, one of them for 8 devices
def test_eight_devices_give_the_one_device_image():
  lr = skimage.transform.resize(skimage.data.coffee(), (24, 40),
                                anti_aliasing=True).astype(np.float32)
  trained = random_trained(scale=0.05, num_experts=2)
  one, eight = (Upscaler(trained, UpscaleOptions(tile=16, overlap=4, color_fix="none", batch=b))
                for b in (1, 8))
  assert one.mesh.devices.size == 1 and eight.mesh.devices.size == 8
  assert one.tile_count(24, 40) == 2 * 3  # 6 tiles: the batch of 8 holds 2 repeats
  ticks = []
  image = eight(lr, on_tile=lambda: ticks.append(1))
  assert len(ticks) == 6
  np.testing.assert_allclose(image, one(lr), atol=1e-5)
  assert np.abs(image - np.repeat(np.repeat(lr, 4, 0), 4, 1)).mean() > 0.02  # not a no-op


def test_a_batch_below_one_is_one_line():
  with pytest.raises(UserError, match="--batch 0 must be at least 1"):
    Upscaler(random_trained(), UpscaleOptions(batch=0))


def test_the_default_batch_on_fake_cpu_devices_is_one():
  """The 8 fake CPU devices share this machine's cores: batching over them gains nothing."""
  import jax

  from linearsr_jax.inference.upscale import default_batch
  assert jax.local_device_count() == 8 and default_batch() == 1
