"""Colour fix modes against float64 NumPy / SciPy references."""

import numpy as np
import pytest
import skimage
from scipy import ndimage

from linearsr_jax.resize import imresize_bicubic
from linearsr_jax.inference.color_fix import color_fix, color_fix_in_place


@pytest.fixture(scope="module")
def pair():
  """A photo as the reference and an 'SR' image with a colour cast and extra fine texture."""
  ref = skimage.transform.resize(skimage.data.chelsea(), (96, 128), anti_aliasing=True)
  rng = np.random.default_rng(0)
  sr = 0.7 * ref + np.array([0.2, 0.05, 0.1]) + 0.03 * rng.standard_normal(ref.shape)
  return np.clip(sr, 0.05, 0.95), ref


def test_adain_matches_per_channel_mean_and_std(pair):
  sr, ref = pair
  out = color_fix(sr, ref, "adain").astype(np.float64)
  np.testing.assert_allclose(out.mean((0, 1)), ref.mean((0, 1)), atol=2e-3)
  np.testing.assert_allclose(out.std((0, 1)), ref.std((0, 1)), atol=3e-3)
  # before the fix the cast is far bigger than the tolerance
  assert np.abs(sr.mean((0, 1)) - ref.mean((0, 1))).max() > 0.05


def low_frequency_f64(image, levels=5):
  """StableSR's `wavelet_decomposition` low band, written out in float64: each level pads by
  its dilation d with replicated edges and convolves with the 3×3 kernel
  [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16 spread to taps d apart."""
  low = np.asarray(image, np.float64)
  kernel = np.outer([1, 2, 1], [1, 2, 1]) / 16
  for level in range(levels):
    d = 2**level
    padded = np.pad(low, ((d, d), (d, d), (0, 0)), mode="edge")
    h, w = low.shape[:2]
    low = sum(
        kernel[i, j] * padded[i * d:i * d + h, j * d:j * d + w] for i in range(3) for j in range(3))
  return low


def test_wavelet_takes_low_frequencies_from_the_reference(pair):
  sr, ref = pair
  out = color_fix(sr, ref, "wavelet").astype(np.float64)
  want = np.clip(sr - low_frequency_f64(sr) + low_frequency_f64(ref), 0, 1)
  np.testing.assert_allclose(out, want, atol=1e-5)
  # so its coarse content is the reference's, while the SR's fine texture stays
  blur = lambda x: ndimage.gaussian_filter(x, (8, 8, 0))
  assert np.abs(blur(out) - blur(ref)).mean() < 0.25 * np.abs(blur(sr) - blur(ref)).mean()
  detail = lambda x: x - low_frequency_f64(x, 1)
  assert np.corrcoef(detail(out).ravel(), detail(sr).ravel())[0, 1] > 0.95


def test_none_is_identity(pair):
  sr, ref = pair
  np.testing.assert_array_equal(color_fix(sr, ref, "none"), sr.astype(np.float32))


@pytest.mark.parametrize("rows", [7, 64])  # bands thinner and thicker than the 31-row halo
def test_the_in_place_fix_in_bands_is_the_whole_image_fix(rows):
  """Against the LR input, its reference made band by band: the float64 wavelet of the whole
  bicubic up-sampling, and AdaIN's whole-image statistics."""
  rng = np.random.default_rng(1)
  lr = skimage.transform.resize(skimage.data.chelsea(), (50, 41), anti_aliasing=True)
  lr = lr.astype(np.float32)
  reference = imresize_bicubic(lr, 200, 164)
  sr = np.clip(reference + 0.1 * rng.standard_normal(reference.shape), 0, 1).astype(np.float32)
  want = np.clip(sr - low_frequency_f64(sr) + low_frequency_f64(reference), 0, 1)
  np.testing.assert_allclose(color_fix_in_place(sr.copy(), lr, "wavelet", rows), want, atol=1e-5)
  np.testing.assert_allclose(color_fix_in_place(sr.copy(), lr, "adain", rows),
                             np.clip(color_fix(sr, reference, "adain"), 0, 1), atol=1e-5)
