"""Latent spaces: the exact pixel space, the DC-AE space and its scaling, the config factory."""

import jax
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from diffusers import AutoencoderDC as TorchAutoencoderDC

from linearsr_jax.errors import UserError
from linearsr_jax import params_io
from linearsr_jax.interop.diffusers_vae import import_autoencoder_dc
from linearsr_jax.models import autoencoder
from linearsr_jax.models.latent_space import (DCAESpace, PixelSpace, default_config, lr_stem_depth,
                                              make_latent_space)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str, factor: int = 4) -> np.ndarray:
  image = getattr(skimage.data, name)()[..., :3]
  h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
  return (image[None, :h, :w].astype(np.float32) / 127.5 - 1).astype(np.float32)


def test_pixel_space_is_torch_pixel_unshuffle_and_exactly_invertible():
  x = np.random.default_rng(0).uniform(-1, 1, (2, 24, 40, 3)).astype(np.float32)
  space = PixelSpace(factor=4)
  latents = np.asarray(space.encode(x))
  reference = F.pixel_unshuffle(torch.from_numpy(x).permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1)
  expected = (reference.double().numpy() - space.shift) * space.scale
  np.testing.assert_allclose(latents, expected, atol=1e-6)
  assert latents.shape == (2, 6, 10, space.channels) and space.channels == 48
  np.testing.assert_allclose(np.asarray(space.decode(latents)), x, atol=1e-6)


def test_pixel_space_latents_of_photographs_are_near_standard():
  space = PixelSpace(factor=4)
  latents = [np.asarray(space.encode(photo(name)), np.float64).ravel() for name in PHOTOS]
  pooled = np.concatenate(latents)
  assert abs(pooled.mean()) < 0.05
  assert 0.9 < pooled.std() < 1.1
  for name, z in zip(PHOTOS, latents):
    assert abs(z.mean()) < 0.6 and 0.5 < z.std() < 1.5, (name, z.mean(), z.std())
  # Without the scaling, photographs are far from it: the defaults are doing the work.
  raw = np.concatenate([photo(name).ravel() for name in PHOTOS])
  assert abs(raw.mean()) > 0.2 and raw.std() < 0.6


def test_non_multiple_sizes_are_user_errors():
  with pytest.raises(UserError, match="not a multiple of the latent factor 4"):
    PixelSpace(factor=4).encode(np.zeros((1, 30, 32, 3), np.float32))


TINY_DCAE = dict(latent_channels=4, attention_head_dim=8,
                 encoder_block_types=["ResBlock", "EfficientViTBlock"],
                 decoder_block_types=["ResBlock",
                                      "EfficientViTBlock"], encoder_block_out_channels=[8, 16],
                 decoder_block_out_channels=[8, 16], encoder_layers_per_block=[1, 1],
                 decoder_layers_per_block=[1, 1], encoder_qkv_multiscales=[[], [5]],
                 decoder_qkv_multiscales=[[], [5]], scaling_factor=0.5)


def test_dcae_space_from_an_imported_params_dir_applies_the_scaling(tmp_path):
  torch.manual_seed(0)
  model = TorchAutoencoderDC(**TINY_DCAE).eval()
  model.save_pretrained(tmp_path / "hf")
  params_io.save_params_dir(tmp_path / "vae", autoencoder.PARAMS_KIND,
                            *import_autoencoder_dc(tmp_path / "hf"))
  config = default_config()
  config.kind = "dcae"
  config.dcae_params = str(tmp_path / "vae")
  space = make_latent_space(config)
  assert (space.factor, space.channels) == (2, 4)

  images = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
  with torch.no_grad():
    ref_latents = model.encode(images).latent * 0.5
    ref_images = model.decode(ref_latents / 0.5).sample
  latents = space.encode(images.permute(0, 2, 3, 1).numpy())
  np.testing.assert_allclose(latents, ref_latents.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
  decoded = space.decode(ref_latents.permute(0, 2, 3, 1).numpy())
  np.testing.assert_allclose(decoded, ref_images.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)


def test_factory():
  config = default_config()
  space = make_latent_space(config)
  assert isinstance(space, PixelSpace) and (space.factor, space.channels) == (4, 48)
  config.factor = 2
  assert make_latent_space(config).channels == 12

  config.kind = "dcae"
  with pytest.raises(UserError, match="needs weights"):
    make_latent_space(config)
  config.dcae = TINY_DCAE
  config.dcae_random_init = True
  space = make_latent_space(config)
  assert isinstance(space, DCAESpace) and (space.factor, space.channels) == (2, 4)
  assert space.encode(np.zeros((1, 8, 8, 3), np.float32)).shape == (1, 4, 4, 4)

  config.kind = "vqgan"
  with pytest.raises(UserError, match="latent.kind"):
    make_latent_space(config)


def test_sana_config_is_the_published_architecture():
  from linearsr_jax.configs.dcae_f32c32_sana import get_config

  model = autoencoder.build(get_config().to_dict())
  assert model.factor == 32 and model.cfg["latent_channels"] == 32
  with torch.device("meta"):
    reference = TorchAutoencoderDC(**get_config().to_dict())
  n_params = sum(
      np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(autoencoder.param_shapes(model)))
  assert n_params == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("factor, scale, depth", [(32, 4, 3), (4, 4, 0), (8, 2, 2), (32, 2, 4)])
def test_lr_stem_depth(factor, scale, depth):
  assert lr_stem_depth(factor, scale) == depth


@pytest.mark.parametrize("factor, scale", [(4, 8), (24, 4), (32, 3)])
def test_lr_stem_depth_needs_a_power_of_two(factor, scale):
  with pytest.raises(UserError, match="not a power of two"):
    lr_stem_depth(factor, scale)
