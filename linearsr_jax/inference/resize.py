"""Bicubic up-sampling in JAX, for the LR-anchored flow source and the sampler's start point."""

import jax


def upsample_bicubic(images, scale: int):
  """[B, h, w, C] -> [B, h·s, w·s, C], Keys cubic (a = -0.5), half-pixel centres."""
  b, h, w, c = images.shape
  return jax.image.resize(images, (b, h * scale, w * scale, c), method="bicubic")
