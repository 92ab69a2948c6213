"""Tiled encode / decode: agreement with untiled runs, no seams, any size, bounded memory."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import skimage.data
import skimage.transform

from linearsr_jax.errors import UserError
from linearsr_jax.inference import tiling
from linearsr_jax.models import autoencoder, latent_space
from repo_paths import REPO


def dcae_space(block_types, widths=(8, 16, 16), seed=0):
  """A small random DC-AE (f = 4): ResBlocks only is local, an EfficientViT level sees the
  whole tile."""
  n = len(widths)
  cfg = dict(latent_channels=8, attention_head_dim=8, encoder_block_types=block_types,
             decoder_block_types=block_types, encoder_block_out_channels=widths,
             decoder_block_out_channels=widths, encoder_layers_per_block=(1,) * n,
             decoder_layers_per_block=(1,) * n, encoder_qkv_multiscales=((),) * (n - 1) + ((5,),),
             decoder_qkv_multiscales=((),) * (n - 1) + ((5,),), downsample_block_type="Conv",
             upsample_block_type="interpolate")
  model = autoencoder.build(cfg)
  return latent_space.DCAESpace(model, autoencoder.init_params(model, seed))


@pytest.fixture(scope="module")
def photo():
  image = skimage.transform.resize(skimage.data.astronaut(), (256, 256), anti_aliasing=True)
  return (image[None] * 2 - 1).astype(np.float32)


def tile_edges(size, tile, overlap, factor):
  """Pixel positions where a tile starts or ends inside the image (not at its border)."""
  starts = [
      s * factor for s in tiling.tile_starts(size // factor, tile // factor, overlap // factor)
  ]
  return sorted({s for s in starts if s > 0} | {s + tile for s in starts if s + tile < size})


def near_inner_tile_edges(size, tile, overlap, factor, margin):
  """1-D mask of pixels within `margin` of some tile's edge inside the image."""
  near = np.zeros(size, bool)
  for edge in tile_edges(size, tile, overlap, factor):
    near[max(edge - margin, 0):edge + margin] = True
  return near


def test_tiled_decode_equals_untiled_away_from_tile_edges(photo):
  # ResBlocks only: each output pixel depends on latents within a small radius (here under
  # 24 px), so wherever every tile that contributes is further than that from its edge, tiled
  # and untiled decoding compute the same numbers.
  space = dcae_space("ResBlock")
  latents = space.encode(photo)
  untiled = np.asarray(space.decode(latents))
  tiled = tiling.tiled_decode(space, latents, tile=128, overlap=32)
  near_y = near_inner_tile_edges(256, 128, 32, space.factor, margin=24)
  away = ~(near_y[:, None] | near_y[None, :])
  assert away.mean() > 0.2
  err = np.abs(tiled - untiled)[0]
  assert err[away].max() <= 1e-4 * np.abs(untiled).max()
  # Near the edges the blend keeps tiles' padding artefacts small.
  assert err.mean() <= 0.01 * np.abs(untiled).mean()


def seam_ratio(tiled, untiled, edges):
  """Mean |gradient error| across tile edges over the mean elsewhere, both image axes."""
  ratios = []
  for axis in (1, 2):
    grad_err = np.abs(np.diff(tiled - untiled, axis=axis))
    per_step = grad_err.mean(axis=tuple(a for a in range(4) if a != axis))
    at_edge = np.zeros(per_step.shape, bool)
    at_edge[[e - 1 for e in edges]] = True  # the step from pixel e-1 to e crosses edge e
    ratios.append(per_step[at_edge].mean() / per_step[~at_edge].mean())
  return max(ratios)


@pytest.mark.slow
@pytest.mark.parametrize("block_types", ["ResBlock", ("ResBlock", "ResBlock", "EfficientViTBlock")],
                         ids=["local", "attention"])
def test_no_seam_on_a_photograph(photo, block_types):
  # With attention a tile's decode depends on all of the tile, so tiled != untiled everywhere;
  # a seam is the error of the image gradient jumping where one tile hands over to the next.
  space = dcae_space(block_types)
  latents = space.encode(photo)
  untiled = np.asarray(space.decode(latents))
  tile, overlap = 96, 32  # pixels
  edges = tile_edges(256, tile, overlap, space.factor)
  for window in ("gaussian", "linear"):
    tiled = tiling.tiled_decode(space, latents, tile=tile, overlap=overlap, window=window)
    assert seam_ratio(tiled, untiled, edges) < 1.5, window
  # The measure sees seams where they exist: plain averaging of the tiles leaves them.
  boxed = tiling.tiled_decode(space, latents, tile=tile, overlap=overlap, window="box")
  assert seam_ratio(boxed, untiled, edges) > 3


def test_odd_size_round_trips_exactly():
  image = np.random.default_rng(0).uniform(-1, 1, (1, 333, 517, 3)).astype(np.float32)
  space = latent_space.PixelSpace(factor=4)
  latents = tiling.tiled_encode(space, image, tile=128, overlap=32)
  assert latents.shape == (1, 84, 130, 48)
  # Tiling a pointwise map changes nothing: equal to encoding the reflection-padded image.
  padded = np.pad(image, ((0, 0), (0, 3), (0, 3), (0, 0)), mode="reflect")
  np.testing.assert_allclose(latents, space.encode(padded), atol=1e-6)
  decoded = tiling.tiled_decode(space, latents, tile=128, overlap=32, size=(333, 517))
  assert decoded.shape == image.shape
  np.testing.assert_allclose(decoded, image, atol=1e-6)


def test_odd_size_through_a_dcae():
  space = dcae_space("ResBlock")
  image = np.zeros((1, 45, 71, 3), np.float32)
  latents = tiling.tiled_encode(space, image, tile=32, overlap=8)
  assert latents.shape == (1, 12, 18, 8)
  decoded = tiling.tiled_decode(space, latents, tile=32, overlap=8, size=(45, 71))
  assert decoded.shape == image.shape and np.isfinite(decoded).all()


@pytest.mark.parametrize("window", tiling.WINDOWS)
def test_tiled_map_of_pointwise_maps_is_exact(window):
  x = np.random.default_rng(1).standard_normal((2, 37, 53, 3)).astype(np.float32)
  np.testing.assert_allclose(tiling.tiled_map(np.tanh, x, 16, 5, window=window), np.tanh(x),
                             rtol=1e-6, atol=1e-6)
  up = tiling.tiled_map(lambda t: np.repeat(np.repeat(t, 3, 1), 3, 2), x, (10, 24), (3, 7), scale=3,
                        window=window)
  np.testing.assert_allclose(up, np.repeat(np.repeat(x, 3, 1), 3, 2), rtol=1e-6, atol=1e-6)


def test_tiles_in_batches_give_the_same_map():
  """5 × 7 tiles of 2 images, 3 tiles per call: 12 calls of 3 × 2 tile images (the last padded
  by a repeat of its last tile), blended as one tile per call blends them."""
  x = np.random.default_rng(2).standard_normal((2, 37, 53, 3)).astype(np.float32)
  calls, done = [], []

  def fn(tiles):
    calls.append(tiles.shape)
    return np.tanh(tiles)

  out = tiling.tiled_map(fn, x, 12, 4, batch=3, done=done.append)
  assert len(tiling.tile_starts(37, 12, 4)) * len(tiling.tile_starts(53, 12, 4)) == 35
  assert calls == [(6, 12, 12, 3)] * 12 and done == [3] * 11 + [2]
  np.testing.assert_allclose(out, np.tanh(x), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out, tiling.tiled_map(np.tanh, x, 12, 4))


def test_bad_tiles_are_user_errors():
  space = latent_space.PixelSpace(factor=4)
  x = np.zeros((1, 64, 64, 3), np.float32)
  with pytest.raises(UserError, match="multiple of the latent factor 4"):
    tiling.tiled_encode(space, x, tile=30, overlap=8)
  with pytest.raises(UserError, match="overlap"):
    tiling.tiled_map(np.tanh, x, 16, 16)
  with pytest.raises(UserError, match="unknown tile window"):
    tiling.tiled_map(np.tanh, x, 16, 4, window="hann")


# Child process: decode a 2048² image from random latents and report its peak RSS (MiB) before
# and after the decode, so the difference belongs to this one decode (VmHWM: see
# bench/common.peak_rss_mib).
_MEMORY_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from bench.common import peak_rss_mib
    from linearsr_jax.inference import tiling
    from linearsr_jax.models import autoencoder, latent_space
    cfg = dict(latent_channels=8, encoder_block_types="ResBlock", decoder_block_types="ResBlock",
               encoder_block_out_channels=[16, 32, 32], decoder_block_out_channels=[16, 32, 32],
               encoder_layers_per_block=[1, 1, 1], decoder_layers_per_block=[1, 1, 1],
               encoder_qkv_multiscales=[[], [], []], decoder_qkv_multiscales=[[], [], []],
               upsample_block_type="interpolate")
    model = autoencoder.build(cfg)
    space = latent_space.DCAESpace(model, autoencoder.init_params(model, 0))
    latents = np.random.default_rng(0).standard_normal((1, 512, 512, 8), np.float32)
    before = peak_rss_mib()
    if sys.argv[1] == "tiled":
      image = tiling.tiled_decode(space, latents, tile=512, overlap=64)
    else:
      image = np.asarray(space.decode(latents))
    assert image.shape == (1, 2048, 2048, 3)
    print(json.dumps({"before": before, "peak": peak_rss_mib()}))
""")


def decode_memory(mode: str) -> float:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, mode], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300, check=True)
  rss = json.loads(out.stdout.strip().splitlines()[-1])
  return rss["peak"] - rss["before"]


@pytest.mark.slow
def test_tiled_decode_memory_is_bounded_by_the_tile():
  # Stated bound: a 2048² decode in 512 px tiles adds at most 384 MiB to the process (measured
  # ~250: the float32 output and weight map are 64 MiB, the rest is compilation and one tile's
  # activations). Decoding it whole needs far more: each full-resolution activation of this
  # 16-channel decoder is 256 MiB (measured ~1.1 GiB in all).
  tiled = decode_memory("tiled")
  untiled = decode_memory("untiled")
  assert tiled <= 384, tiled
  assert untiled > 2.5 * tiled, (tiled, untiled)
