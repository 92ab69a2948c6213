"""Degradations against formulas (float64), Pillow, PyTorch and the JPEG standard's tables."""

import io
import math

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import special

from linearsr_jax.data import degradations as deg
from linearsr_jax.errors import UserError
from linearsr_jax.resize import imresize_bicubic


def _covariance(sigma_x, sigma_y, theta):
  c, s = math.cos(theta), math.sin(theta)
  return np.array([
      [c * c * sigma_x**2 + s * s * sigma_y**2, c * s * (sigma_x**2 - sigma_y**2)],
      [c * s * (sigma_x**2 - sigma_y**2), s * s * sigma_x**2 + c * c * sigma_y**2],
  ])


def _moments(kernel):
  """Second moments of a kernel, x = column offset, y = row offset from the centre."""
  kernel = kernel.astype(np.float64)
  n = kernel.shape[0]
  y, x = np.mgrid[:n, :n] - (n - 1) / 2
  return np.array([[np.sum(kernel * x * x), np.sum(kernel * x * y)],
                   [np.sum(kernel * x * y), np.sum(kernel * y * y)]])


@pytest.mark.parametrize("sigma_x,sigma_y,theta", [(2.0, 2.0, 0.0), (3.0, 1.2, 0.6),
                                                   (1.0, 2.5, -2.0)])
def test_gaussian_kernel_sum_and_covariance(sigma_x, sigma_y, theta):
  kernel = deg.gaussian_kernel(41, sigma_x, sigma_y, theta)
  assert kernel.shape == (41, 41)
  assert abs(kernel.astype(np.float64).sum() - 1) < 1e-5
  np.testing.assert_allclose(_moments(kernel), _covariance(sigma_x, sigma_y, theta),
                             atol=2e-3 * sigma_x * sigma_y)


@pytest.mark.parametrize("beta", [0.75, 1.0, 2.0, 4.0])
def test_generalized_gaussian_covariance(beta):
  # exp(-0.5 (x'S^-1 x)^b) has covariance S * 2^(1/b - 1) Gamma(2/b) / Gamma(1/b).
  sigma_x, sigma_y, theta = 3.0, 2.0, 0.4
  kernel = deg.generalized_gaussian_kernel(81, sigma_x, sigma_y, theta, beta)
  assert abs(kernel.astype(np.float64).sum() - 1) < 1e-5
  factor = 2**(1 / beta - 1) * special.gamma(2 / beta) / special.gamma(1 / beta)
  np.testing.assert_allclose(_moments(kernel), factor * _covariance(sigma_x, sigma_y, theta),
                             rtol=0.02, atol=0.02)


def test_plateau_kernel_formula():
  sigma_x, sigma_y, theta, beta = 2.0, 1.0, 0.9, 1.5
  kernel = deg.plateau_kernel(15, sigma_x, sigma_y, theta, beta).astype(np.float64)
  assert abs(kernel.sum() - 1) < 1e-5
  inverse = np.linalg.inv(_covariance(sigma_x, sigma_y, theta))
  for row, col in [(7, 7), (7, 10), (3, 9), (14, 0)]:
    d = np.array([col - 7, row - 7], np.float64)
    expected = 1 / (1 + (d @ inverse @ d)**beta)
    assert kernel[row, col] / kernel[7, 7] == pytest.approx(expected, rel=1e-5)


def test_sinc_kernel_is_a_low_pass_at_the_cutoff():
  cutoff = np.pi / 2
  kernel = deg.sinc_kernel(21, cutoff).astype(np.float64)
  assert abs(kernel.sum() - 1) < 1e-5
  n = np.arange(21) - 10

  def gain(omega):  # frequency response along the x axis
    return abs(np.sum(kernel * np.exp(-1j * omega * n)[None, :]))

  assert gain(0.3 * cutoff) > 0.9
  assert gain(0.6 * cutoff) > 0.85
  assert gain(1.6 * cutoff) < 0.1
  assert gain(1.9 * cutoff) < 0.1


def test_random_kernels_follow_the_config():
  cfg = deg.default_config()
  rng = np.random.default_rng(0)
  counts = dict.fromkeys(deg.KERNEL_TYPES + ("sinc",), 0)
  n = 3000
  for _ in range(n):
    trace = []
    kernel = deg.random_blur_kernel(rng, cfg.pass1, cfg.kernel_sizes, trace)
    params = trace[0][1]
    counts[params["type"]] += 1
    assert kernel.shape == (params["size"], params["size"]) and params["size"] % 2 == 1
    assert 7 <= params["size"] <= 21
    assert abs(kernel.sum() - 1) < 1e-4
    if params["type"] != "sinc":
      assert 0.2 <= params["sigma_x"] <= 3.0
  assert counts["sinc"] / n == pytest.approx(0.1, abs=0.02)
  for kind, p in zip(deg.KERNEL_TYPES, cfg.pass1.kernel_probs):
    assert counts[kind] / n == pytest.approx(0.9 * p, abs=0.025), kind


@pytest.fixture(scope="module")
def photo():
  return skimage.data.astronaut()[100:356, 150:406]  # 256 x 256 uint8


def _pillow_bicubic(image, out_hw):
  """Pillow's antialiased bicubic (a = -0.5) per channel in float mode (no 8-bit rounding)."""
  return np.stack([
      np.asarray(
          Image.fromarray(image[..., c].astype(np.float32), "F").resize(
              out_hw[::-1], Image.BICUBIC)) for c in range(image.shape[-1])
  ], -1)


# Pillow renormalises truncated taps at the border where MATLAB mirrors the image: compare
# away from the border (3 output pixels cover the 4x down-sampling kernel's reach).
_B = 3


@pytest.mark.parametrize("out_hw", [(64, 64), (100, 73)])
def test_bicubic_downsampling_matches_pillow(photo, out_hw):
  ours = np.round(imresize_bicubic(photo / 255.0, *out_hw) * 255)
  reference = np.round(_pillow_bicubic(photo.astype(np.float64), out_hw))
  assert ours.shape == out_hw + (3,)
  assert np.abs(ours - reference)[_B:-_B, _B:-_B].max() <= 1


def test_bicubic_mode_gives_the_pillow_lr(photo):
  cfg = deg.default_config()
  cfg.mode = "bicubic"
  hr, lr = deg.degrade_pair(photo / 255.0, 4, np.random.default_rng(0), cfg)
  reference = np.clip(np.round(_pillow_bicubic(photo.astype(np.float64), (64, 64))), 0, 255) / 255
  assert lr.shape == (64, 64, 3)
  assert np.abs(lr - reference)[_B:-_B, _B:-_B].max() <= 1 / 255 + 1e-6
  np.testing.assert_array_equal(hr, (photo / 255.0).astype(np.float32))


@pytest.mark.parametrize("mode,out_hw", [("bicubic", (64, 64)), ("bicubic", (300, 170)),
                                         ("bilinear", (97, 131)), ("bilinear", (384, 384)),
                                         ("area", (64, 128))])
def test_resize_matches_torch_interpolate(photo, mode, out_hw):
  image = photo / 255.0
  ours = deg.resize(image.astype(np.float32), *out_hw, mode)
  x = torch.from_numpy(image).permute(2, 0, 1)[None]
  kwargs = {} if mode == "area" else {"align_corners": False}
  reference = F.interpolate(x, size=out_hw, mode=mode, **kwargs)[0].permute(1, 2, 0).numpy()
  assert ours.shape == out_hw + (3,)
  assert np.abs(ours - reference).max() * 255 <= 1.0


_JPEG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99
])


def _estimated_quality(jpeg_bytes):
  """The IJG quality whose scaled Annex K table equals the file's luminance table."""
  table = np.array(list(Image.open(io.BytesIO(jpeg_bytes)).quantization[0]))
  for quality in range(1, 101):
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality  # libjpeg integer math
    if np.array_equal(np.clip((_JPEG_LUMINANCE * scale + 50) // 100, 1, 255), table):
      return quality
  return None


@pytest.mark.parametrize("quality", [30, 57, 95])
def test_jpeg_quality_is_recorded_in_the_file(photo, quality):
  data = deg.jpeg_encode(photo / 255.0, quality)
  assert _estimated_quality(data) == quality
  decoded = deg.jpeg_decode(data)
  assert decoded.shape == photo.shape and decoded.dtype == np.float32


def test_jpeg_in_the_model_uses_the_traced_quality(photo, monkeypatch):
  encoded = []
  original = deg.jpeg_encode
  monkeypatch.setattr(deg, "jpeg_encode",
                      lambda im, q: encoded.append(original(im, q)) or encoded[-1])
  trace = []
  deg.degrade_pair(photo[:64, :64] / 255.0, 4, np.random.default_rng(5), deg.default_config(),
                   trace)
  traced = [params["quality"] for op, params in trace if op == "jpeg"]
  assert len(traced) == 2 and all(30 <= q <= 95 for q in traced)
  assert [_estimated_quality(data) for data in encoded] == traced


@pytest.mark.parametrize("gray", [False, True])
def test_gaussian_noise_std(gray):
  noise = deg.gaussian_noise((128, 128, 3), 20.0, gray, np.random.default_rng(0))
  assert noise.std() == pytest.approx(20 / 255, rel=0.02)
  assert abs(noise.mean()) < 0.002
  correlation = np.corrcoef(noise[..., 0].ravel(), noise[..., 2].ravel())[0, 1]
  if gray:
    np.testing.assert_array_equal(noise[..., 0], noise[..., 2])
  else:
    assert abs(correlation) < 0.03


def test_poisson_noise_variance():
  # All 256 levels present -> 256 counting levels; Var(noise) = scale^2 * value / 256.
  ramp = np.tile(np.arange(256, dtype=np.float32) / 255, (256, 1))
  image = np.stack([ramp, ramp.T, ramp[::-1]], -1)
  scale = 2.0
  noise = deg.poisson_noise(image, scale, False, np.random.default_rng(0)).astype(np.float64)
  assert noise.var() == pytest.approx(scale**2 * image.mean() / 256, rel=0.03)
  assert abs(noise.mean()) < 1e-3
  gray_noise = deg.poisson_noise(image, scale, True, np.random.default_rng(0))
  np.testing.assert_array_equal(gray_noise[..., 0], gray_noise[..., 1])


def test_degrade_pair_shapes_range_and_seed(photo):
  hr = photo[:128, :96] / 255.0
  cfg = deg.default_config()
  results = [deg.degrade_pair(hr, 4, np.random.default_rng(seed), cfg)[1] for seed in (1, 1, 2)]
  for lr in results:
    assert lr.shape == (32, 24, 3) and lr.dtype == np.float32
    assert lr.min() >= 0 and lr.max() <= 1
    np.testing.assert_array_equal(np.round(lr * 255) / 255, lr)  # 8-bit levels
  np.testing.assert_array_equal(results[0], results[1])
  assert np.abs(results[0] - results[2]).mean() > 1e-3
  # A degraded image still looks like its source at low resolution.
  reference = imresize_bicubic(hr, 32, 24)
  assert np.corrcoef(results[0].ravel(), reference.ravel())[0, 1] > 0.5


def test_bicubic_prob_mixes_in_pillow_bicubic_pairs_at_that_rate(photo):
  hr = photo[:64, :64] / 255.0
  cfg = deg.default_config()
  cfg.bicubic_prob = 0.3
  reference = np.clip(np.round(_pillow_bicubic(photo[:64, :64].astype(np.float64),
                                               (16, 16))), 0, 255) / 255
  bicubic = 0
  for seed in range(200):
    trace = []
    lr = deg.degrade_pair(hr, 4, np.random.default_rng(seed), cfg, trace)[1]
    if trace == [("bicubic", {})]:
      bicubic += 1
      assert np.abs(lr - reference)[_B:-_B, _B:-_B].max() <= 1 / 255 + 1e-6
    else:
      assert ("bicubic", {}) not in trace and len(trace) > 3
  assert abs(bicubic - 60) <= 4 * math.sqrt(200 * 0.3 * 0.7)  # binomial(200, 0.3)
  cfg.bicubic_prob = 0.0  # off: not one draw more than a config without it
  plain = deg.default_config()
  for seed in range(3):
    np.testing.assert_array_equal(
        deg.degrade_pair(hr, 4, np.random.default_rng(seed), cfg)[1],
        _realesrgan_without_the_draw(hr, seed, plain))


def test_first_order_is_one_pass_resized_straight_to_the_target(photo, monkeypatch):
  hr = photo[:128, :96] / 255.0
  cfg = deg.default_config()
  cfg.mode = "first_order"
  trace = []
  deg.degrade_pair(hr, 4, np.random.default_rng(0), cfg, trace)
  ops = [op for op, _ in trace]
  assert ops == ["blur", "resize_to_target", ops[2], "jpeg"]
  assert ops[2] in ("gaussian_noise", "poisson_noise")
  # Without blur and noise, and JPEG seen through its input, it is torch's bilinear down-scaling.
  cfg.resize_modes = ("bilinear",)
  cfg.pass1.update(blur_prob=0.0, gaussian_noise_prob=1.0, noise_range=(0.0, 0.0),
                   jpeg_range=(90, 90))
  encoded = []
  monkeypatch.setattr(deg, "jpeg", lambda image, quality: encoded.append(quality) or image)
  lr = deg.degrade_pair(hr, 4, np.random.default_rng(1), cfg)[1]
  small = F.interpolate(
      torch.from_numpy(hr).permute(2, 0, 1)[None], size=(32, 24), mode="bilinear",
      align_corners=False)[0].permute(1, 2, 0).numpy()
  assert encoded == [90] and lr.shape == (32, 24, 3)
  assert np.abs(lr - small).max() <= 0.5 / 255 + 1e-4


def _realesrgan_without_the_draw(hr, seed, cfg):
  rng = np.random.default_rng(seed)
  lr = deg._realesrgan(np.asarray(hr, np.float32), 4, rng, cfg, None)
  return np.clip(np.round(lr * 255.0), 0, 255).astype(np.float32) / 255.0


def test_usm_target_sharpens_edges_only():
  flat = np.full((64, 64, 3), 0.4, np.float32)
  np.testing.assert_allclose(deg.usm_sharpen(flat), flat, atol=1e-6)
  step = flat.copy()
  step[:, 32:] = 0.8
  sharp = deg.usm_sharpen(step)
  assert sharp[:, 31].mean() < 0.4 - 0.01 and sharp[:, 32].mean() > 0.8 + 0.01  # overshoot
  cfg = deg.default_config()
  cfg.usm_target = True
  hr, _ = deg.degrade_pair(step, 4, np.random.default_rng(0), cfg)
  np.testing.assert_allclose(hr, sharp)


def test_bad_inputs():
  cfg = deg.default_config()
  with pytest.raises(UserError, match="divisible"):
    deg.degrade_pair(np.zeros((30, 32, 3), np.float32), 4, np.random.default_rng(0), cfg)
  cfg.bicubic_prob = 1.5
  with pytest.raises(UserError, match="not a probability"):
    deg.degrade_pair(np.zeros((32, 32, 3), np.float32), 4, np.random.default_rng(0), cfg)
  cfg.bicubic_prob = 0.0
  cfg.mode = "nearest"
  with pytest.raises(UserError, match="degradation mode"):
    deg.degrade_pair(np.zeros((32, 32, 3), np.float32), 4, np.random.default_rng(0), cfg)
