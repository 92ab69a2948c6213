"""Colour correction of an SR image against its LR input (the peers' fix for colour shifts).

- `adain`: per-channel mean and std of the SR image matched to the bicubic-upsampled LR.
- `wavelet`: the SR image's low frequencies replaced by the upsampled LR's, as StableSR's
  `wavelet_reconstruction` does it: both are split by five 3×3 [1, 2, 1]/4 blurs of dilation
  1, 2, 4, 8, 16 with replicated edges; the SR detail levels are kept, the LR residual taken.
Images are float HxWx3 in [0, 1]. `color_fix_in_place` does the same to a full-resolution SR
image against its LR input in bands of rows, the upsampled reference made band by band, so that
no second full-resolution image is ever held.
"""

import cv2
import numpy as np

from linearsr_jax.resize import imresize_bicubic_rows

MODES = ("wavelet", "adain", "none")
LEVELS = 5
# Rows beyond a band that its low frequencies depend on: the blurs reach 1 + 2 + 4 + 8 + 16.
HALO = 2**LEVELS - 1
# Rows per band: twice the halo each band recomputes; a band of a 24000 px wide image is 36 MB.
BAND_ROWS = 2 * HALO + 2


def _adain_apply(sr, sr_stats, reference_stats):
  (mean_sr, std_sr), (mean_ref, std_ref) = sr_stats, reference_stats
  return (sr - mean_sr) / (std_sr + 1e-6) * std_ref + mean_ref


def adain(sr, reference):
  return _adain_apply(sr, (sr.mean((0, 1)), sr.std((0, 1))), (reference.mean(
      (0, 1)), reference.std((0, 1))))


def _low_frequency(image, levels: int):
  """The residual after `levels` blurs of dilation 1, 2, 4, … (the 3×3 kernel is separable)."""
  low = image
  for level in range(levels):
    d = 2**level
    kernel = np.zeros(2 * d + 1, np.float32)
    kernel[::d] = [1 / 4, 1 / 2, 1 / 4]
    low = cv2.sepFilter2D(low, -1, kernel, kernel, borderType=cv2.BORDER_REPLICATE)
  return low


def wavelet(sr, reference, levels: int = LEVELS):
  return sr - _low_frequency(sr, levels) + _low_frequency(reference, levels)


def color_fix(sr, lr_upsampled, mode: str):
  sr = np.asarray(sr, np.float32)
  if mode == "none":
    return sr
  reference = np.asarray(lr_upsampled, np.float32)
  fixed = adain(sr, reference) if mode == "adain" else wavelet(sr, reference)
  return np.clip(fixed, 0.0, 1.0)


def _bands(height: int, rows: int):
  return [(start, min(start + rows, height)) for start in range(0, height, rows)]


def _channel_stats(bands) -> tuple:
  """Per-channel (mean, std) of the images in `bands`, summed in float64."""
  count, total, squares = 0, 0.0, 0.0
  for band in bands:
    band = band.reshape(-1, band.shape[-1]).astype(np.float64)
    count, total, squares = count + len(band), total + band.sum(0), squares + (band**2).sum(0)
  mean = total / count
  return mean.astype(np.float32), np.sqrt(np.maximum(squares / count - mean**2,
                                                     0.0)).astype(np.float32)


def color_fix_in_place(sr, lr, mode: str, rows: int = BAND_ROWS):
  """color_fix(sr, the bicubic up-sampling of `lr` to sr's size, mode), written into `sr`
  (float32 [H, W, 3], may be a view), in bands of `rows` rows."""
  if mode == "none":
    return sr
  height, width = sr.shape[:2]

  def reference(start, stop):
    return imresize_bicubic_rows(lr, height, width, start, stop)

  bands = _bands(height, rows)
  if mode == "adain":
    stats = _channel_stats(sr[a:b] for a, b in bands)
    reference_stats = _channel_stats(reference(a, b) for a, b in bands)
    for a, b in bands:
      sr[a:b] = np.clip(_adain_apply(sr[a:b], stats, reference_stats), 0.0, 1.0)
    return sr
  # wavelet: a band's result needs the original rows up to HALO beyond it, so a fixed band is
  # written back only once no band still to come reads its rows.
  pending = []
  for a, b in bands:
    lo, hi = max(0, a - HALO), min(height, b + HALO)
    fixed = wavelet(np.ascontiguousarray(sr[lo:hi]), reference(lo, hi))[a - lo:b - lo]
    pending.append((a, b, np.clip(fixed, 0.0, 1.0)))
    while pending and (b == height or pending[0][1] <= b - HALO):
      start, stop, rows_fixed = pending.pop(0)
      sr[start:stop] = rows_fixed
  return sr
