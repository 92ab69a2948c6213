"""Colour correction of an SR image against its LR input (the peers' fix for colour shifts).

- `adain`: per-channel mean and std of the SR image matched to the bicubic-upsampled LR.
- `wavelet`: the SR image's low frequencies replaced by the upsampled LR's, as StableSR's
  `wavelet_reconstruction` does it: both are split by five 3×3 [1, 2, 1]/4 blurs of dilation
  1, 2, 4, 8, 16 with replicated edges; the SR detail levels are kept, the LR residual taken.
Images are float HxWx3 in [0, 1].
"""

import cv2
import numpy as np

MODES = ("wavelet", "adain", "none")


def adain(sr, reference):
  mean_sr, std_sr = sr.mean((0, 1)), sr.std((0, 1)) + 1e-6
  mean_ref, std_ref = reference.mean((0, 1)), reference.std((0, 1))
  return (sr - mean_sr) / std_sr * std_ref + mean_ref


def _low_frequency(image, levels: int):
  """The residual after `levels` blurs of dilation 1, 2, 4, … (the 3×3 kernel is separable)."""
  low = image
  for level in range(levels):
    d = 2 ** level
    kernel = np.zeros(2 * d + 1, np.float32)
    kernel[::d] = [1 / 4, 1 / 2, 1 / 4]
    low = cv2.sepFilter2D(low, -1, kernel, kernel, borderType=cv2.BORDER_REPLICATE)
  return low


def wavelet(sr, reference, levels: int = 5):
  return sr - _low_frequency(sr, levels) + _low_frequency(reference, levels)


def color_fix(sr, lr_upsampled, mode: str):
  sr = np.asarray(sr, np.float32)
  if mode == "none":
    return sr
  reference = np.asarray(lr_upsampled, np.float32)
  fixed = adain(sr, reference) if mode == "adain" else wavelet(sr, reference)
  return np.clip(fixed, 0.0, 1.0)
