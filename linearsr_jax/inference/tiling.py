"""Tile-by-tile processing of images and latents of any size, with seam-free blending.

`tiled_map(fn, x, tile, overlap, scale)` runs `fn` on overlapping tiles of `x` (NHWC) and
blends the outputs with weights that fall towards each tile's edge, normalised by their sum.
Tiles run `batch` at a time (stacked on the batch axis; the last batch padded with repeats of
its last tile) in a Python loop and only the output is accumulated (NumPy, in place; the tile
weights are an outer product over a grid of tiles, so their sum is the outer product of two 1-D
sums, not another image), so device memory is bounded by the batch of tiles and host memory by
one output; every call has the same shape, so a jitted `fn` compiles once. `fn`
may change the resolution by `scale` (1/f to encode, f to decode, 1 for a denoising step in
latent space).

`tiled_encode` / `tiled_decode` wrap a latent space (models/latent_space.py) for images of any
size: reflection-pad to a multiple of the latent factor, then crop back to the input size.
"""

import math
from fractions import Fraction

import numpy as np

from linearsr_jax.errors import UserError

WINDOWS = ("gaussian", "linear", "box")


def _pair(v) -> tuple[int, int]:
  return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
  """Start offsets of tiles of length min(tile, size) covering [0, size), consecutive tiles
  sharing at least `overlap`; starts are multiples of `align` and the last tile ends at `size`."""
  tile = min(tile, size)
  stride = max(align, (tile - overlap) // align * align)
  starts = list(range(0, size - tile, stride)) + [size - tile]
  return sorted(set(starts))


def window_1d(length: int, ramp: int, kind: str) -> np.ndarray:
  """Blending weights along one tile axis, positive everywhere.

  "gaussian" (default): a bell with sigma = length/8, so a tile's edge, where its convolutions
  saw zero padding instead of the neighbouring content, keeps only exp(-8) ≈ 3e-4 of the weight
  of its centre; each output pixel comes mostly from the tile it is most central in, with
  smooth cross-fades. "linear": 1 in the middle, falling linearly to ~0 over `ramp` samples at
  each end (two tiles overlapping by `ramp` cross-fade with weights summing to one; edge
  effects within the overlap keep more weight than with "gaussian"). "box": plain averaging,
  which leaves visible seams (kept for comparison).
  """
  centers = np.arange(length) + 0.5
  if kind == "gaussian":
    return np.exp(-0.5 * ((centers - length / 2) / (length / 8))**2)
  if kind == "linear":
    ramp = max(ramp, 1)
    return np.minimum(1.0, np.minimum(centers, length - centers) / ramp)
  if kind == "box":
    return np.ones(length)
  raise UserError(f"unknown tile window {kind!r} ({', '.join(WINDOWS)})")


def tiled_map(fn, x, tile, overlap, scale=1, window: str = "gaussian", align: int = 1,
              batch: int = 1, done=lambda tiles: None) -> np.ndarray:
  """Applies `fn` to `batch` tiles at a time: x [B, H, W, C] -> [B, H·scale, W·scale, C']
  (float32 NumPy); `fn` maps [batch·B, h, w, C] (tile-major) to [batch·B, h·scale, w·scale, C'].

  `tile`, `overlap` (int or (h, w)) are in units of `x`. Tile starts, tile sizes and H, W
  must map to whole output samples: multiples of scale's denominator (the latent factor when
  encoding), and of `align` when `fn` needs more (an SR tile must fill whole latent cells).
  `done(n)` is called after each call of `fn` with the number of real tiles it ran.
  """
  scale = Fraction(scale).limit_denominator(1 << 16)
  align = math.lcm(scale.denominator, align)
  x = np.asarray(x)
  b, h, w = x.shape[:3]
  (tile_h, tile_w), (over_h, over_w) = _pair(tile), _pair(overlap)
  th, tw = min(tile_h, h), min(tile_w, w)
  for name, v in (("image height", h), ("image width", w), ("tile height", th), ("tile width", tw)):
    if v % align:
      raise UserError(f"{name} {v} is not a multiple of {align} (the tile map's scale is {scale})")
  if not (0 <= over_h < th and 0 <= over_w < tw):
    raise UserError(f"tile overlap {overlap} must be >= 0 and smaller than the tile {tile}")
  oth, otw = int(th * scale), int(tw * scale)
  window_h = window_1d(oth, int(over_h * scale), window)
  window_w = window_1d(otw, int(over_w * scale), window)
  weights = np.outer(window_h, window_w).astype(np.float32)
  starts_h, starts_w = tile_starts(h, th, over_h, align), tile_starts(w, tw, over_w, align)
  starts = [(y, x0) for y in starts_h for x0 in starts_w]
  out = None
  for first in range(0, len(starts), batch):
    group = starts[first:first + batch]
    tiles = [x[:, y:y + th, x0:x0 + tw] for y, x0 in group]
    tiles += tiles[-1:] * (batch - len(group))
    result = np.asarray(fn(np.concatenate(tiles)), dtype=np.float32)
    if result.shape[:3] != (batch * b, oth, otw):
      raise ValueError(f"fn mapped {batch * b} {th}×{tw} tiles to {result.shape}, expected "
                       f"({batch * b}, {oth}, {otw}, C) for scale {scale}")
    if out is None:
      out = np.zeros((b, int(h * scale), int(w * scale), result.shape[3]), np.float32)
    for i, (y, x0) in enumerate(group):
      oy, ox = int(y * scale), int(x0 * scale)
      out[:, oy:oy + oth, ox:ox + otw] += result[i * b:(i + 1) * b] * weights[:, :, None]
    done(len(group))
  out /= _weight_sum(window_h, starts_h, scale, out.shape[1])[:, None, None]
  out /= _weight_sum(window_w, starts_w, scale, out.shape[2])[:, None]
  return out


def _weight_sum(window, starts, scale, size) -> np.ndarray:
  """The sum along one axis of `window` placed at each of `starts` (in input units)."""
  total = np.zeros(size)
  for start in starts:
    total[int(start * scale):int(start * scale) + len(window)] += window
  return total.astype(np.float32)


def pad_to_multiple(images, factor: int) -> np.ndarray:
  """Reflection-pads bottom and right so H and W are multiples of `factor`."""
  images = np.asarray(images)
  h, w = images.shape[1:3]
  pad = ((0, 0), (0, -h % factor), (0, -w % factor), (0, 0))
  return np.pad(images, pad, mode="reflect") if any(p[1] for p in pad) else images


def _in_latent_units(space, tile, overlap):
  f = space.factor
  for name, v in (("tile", tile), ("overlap", overlap)):
    if any(p % f for p in _pair(v)):
      raise UserError(f"{name} {v} px is not a multiple of the latent factor {f}")
  return tuple(p // f for p in _pair(tile)), tuple(p // f for p in _pair(overlap))


def tiled_encode(space, images, tile=512, overlap=64, window: str = "gaussian") -> np.ndarray:
  """Latents of images of any size: [B, ceil(H/f), ceil(W/f), C]. Tile and overlap in pixels."""
  _in_latent_units(space, tile, overlap)
  padded = pad_to_multiple(images, space.factor)
  return tiled_map(space.encode, padded, tile, overlap, Fraction(1, space.factor), window)


def tiled_decode(space, latents, tile=512, overlap=64, size=None,
                 window: str = "gaussian") -> np.ndarray:
  """Images from latents, cropped to `size` = (H, W) when given. Tile and overlap in pixels."""
  tile_z, overlap_z = _in_latent_units(space, tile, overlap)
  images = tiled_map(space.decode, latents, tile_z, overlap_z, space.factor, window)
  if size is not None:
    images = images[:, :size[0], :size[1]]
  return images
