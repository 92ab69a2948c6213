"""A picture (data/picture.py) upscaled whole: colour through the model, the rest kept.

The colour goes through the model (inference/upscale.py) at the model's scale. The alpha does
not: the model knows photographs, not masks, so the LR alpha is resized straight to the output
size by the project's bicubic (MATLAB's imresize, resize.py) and clipped to [0, 1]. With
`outscale` F the model's output is then resized to round(F·h) × round(F·w) by the same bicubic
(antialiased when it shrinks), as Real-ESRGAN resizes its ×4 output for --outscale. Grey, bit
depth and ICC profile pass through to the output picture.
"""

import dataclasses

import numpy as np

from linearsr_jax.data.picture import Picture
from linearsr_jax.errors import UserError
from linearsr_jax.resize import imresize_bicubic_in_bands


def output_size(height: int, width: int, scale: int, outscale: float | None) -> tuple[int, int]:
  """(height, width) of the output: the model's `scale`, or round(outscale × size)."""
  if outscale is None:
    return height * scale, width * scale
  if not 0 < outscale < float("inf"):
    raise UserError(f"--outscale {outscale:g} must be a number > 0")
  size = round(outscale * height), round(outscale * width)
  if min(size) < 1:
    raise UserError(f"--outscale {outscale} makes {width}x{height} smaller than one pixel")
  return size


def upscale_picture(upscaler, picture: Picture, condition=None, outscale: float | None = None,
                    on_tile=lambda: None) -> Picture:
  """`upscaler(colour, condition)` on the picture's colour, then the resizes above."""
  height, width = picture.colour.shape[:2]
  size = output_size(height, width, upscaler.scale, outscale)
  colour = upscaler(picture.colour, condition, on_tile=on_tile)
  if colour.shape[:2] != size:
    colour = imresize_bicubic_in_bands(colour, *size)
    np.clip(colour, 0.0, 1.0, out=colour)
  alpha = picture.alpha
  if alpha is not None:
    alpha = imresize_bicubic_in_bands(alpha[..., None], *size)[..., 0]
    np.clip(alpha, 0.0, 1.0, out=alpha)
  return dataclasses.replace(picture, colour=colour, alpha=alpha)
