"""The Real-ESRGAN second-order degradation model (NumPy / OpenCV), its first pass alone, and
plain bicubic.

Follows BasicSR's `RealESRGANDataset` + `RealESRGANModel.feed_data` with the ranges of
`train_realesrgan_x4plus.yml` (the recipe SeeSR, OSEDiff, DiT4SR and HYPIR reuse):

  [USM]  -> pass 1: blur -> resize -> noise -> JPEG
         -> pass 2: blur (p=.8) -> resize -> noise
         -> either [resize to target + sinc] -> JPEG, or JPEG -> [resize + sinc]   (p=.5)
         -> round to 8 bits.

`mode='first_order'` is pass 1 alone, resizing straight to the target size (blur (p) ->
resize -> noise -> JPEG -> 8 bits): the classic first-order model, milder, with pass 1's ranges.

Images are float32 HxWx3 RGB in [0, 1]. All randomness comes from the np.random.Generator
passed in, so a seed fixes the LR image. Differences from the PyTorch original: resizing uses
OpenCV (bilinear / bicubic match torch's `interpolate`; 'area' matches it for down-scaling,
while up-scaling with 'area' is OpenCV's, not torch's nearest-like one), and JPEG goes through
libjpeg (OpenCV) at an integer quality instead of the differentiable DiffJPEG.
"""

import math

import cv2
import ml_collections
import numpy as np
from scipy import special

from linearsr_jax.errors import UserError
from linearsr_jax.resize import imresize_bicubic

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso",
                "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
_CV2_INTERPOLATION = {
    "area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC
}
DEGRADATION_MODES = ("realesrgan", "first_order", "bicubic")


def _pass_config(sigma, resize_probs, resize_range, noise_range, poisson_range, blur_prob):
  return ml_collections.ConfigDict(
      dict(
          blur_prob=blur_prob,
          kernel_probs=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),  # in KERNEL_TYPES order
          sinc_prob=0.1,
          blur_sigma=sigma,
          betag_range=(0.5, 4.0),
          betap_range=(1.0, 2.0),
          resize_probs=resize_probs,  # up, down, keep
          resize_range=resize_range,
          gaussian_noise_prob=0.5,
          noise_range=noise_range,  # Gaussian sigma on the 0-255 scale
          poisson_scale_range=poisson_range,
          gray_noise_prob=0.4,
          jpeg_range=(30, 95),
      ))


def default_config() -> ml_collections.ConfigDict:
  """Real-ESRGAN x4plus ranges; `mode='bicubic'` gives classic (MATLAB-style) bicubic SR."""
  return ml_collections.ConfigDict(
      dict(
          mode="realesrgan",
          # With this probability a 'realesrgan' / 'first_order' pair is classic bicubic instead:
          # a model trained only on degraded LR images over-restores a clean one.
          bicubic_prob=0.0,
          kernel_sizes=tuple(range(7, 22, 2)),
          resize_modes=RESIZE_MODES,
          pass1=_pass_config((0.2, 3.0), (0.2, 0.7, 0.1), (0.15, 1.5), (1.0, 30.0), (0.05, 3.0),
                             blur_prob=1.0),
          pass2=_pass_config((0.2, 1.5), (0.3, 0.4, 0.3), (0.3, 1.2), (1.0, 25.0), (0.05, 2.5),
                             blur_prob=0.8),
          final_sinc_prob=0.8,
          # Unsharp masking of the target (Real-ESRGAN's l1_gt_usm); the degradation then
          # starts from the sharpened image too, as in Real-ESRGAN.
          usm_target=False,
          usm_weight=0.5,
          usm_radius=50,
          usm_threshold=10.0,
      ))


# ---------------------------------------------------------------------------------- kernels


def sigma_matrix(sigma_x, sigma_y, theta) -> np.ndarray:
  """Covariance R diag(sx^2, sy^2) R^T of a Gaussian rotated by theta."""
  rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
  return rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T


def _mahalanobis2(size, sigma_x, sigma_y, theta) -> np.ndarray:
  """x^T Sigma^-1 x on a size x size grid centred on the middle pixel (x = column offset)."""
  axis = np.arange(size, dtype=np.float64) - (size - 1) / 2
  xx, yy = np.meshgrid(axis, axis)
  grid = np.stack([xx, yy], -1)
  inverse = np.linalg.inv(sigma_matrix(sigma_x, sigma_y, theta))
  return np.einsum("...i,ij,...j->...", grid, inverse, grid)


def gaussian_kernel(size, sigma_x, sigma_y, theta) -> np.ndarray:
  return _normalise(np.exp(-0.5 * _mahalanobis2(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, beta) -> np.ndarray:
  return _normalise(np.exp(-0.5 * _mahalanobis2(size, sigma_x, sigma_y, theta)**beta))


def plateau_kernel(size, sigma_x, sigma_y, theta, beta) -> np.ndarray:
  return _normalise(1.0 / (_mahalanobis2(size, sigma_x, sigma_y, theta)**beta + 1.0))


def sinc_kernel(size, cutoff) -> np.ndarray:
  """Circular low-pass (2-D sinc / jinc) kernel with angular cut-off frequency `cutoff`."""
  axis = np.arange(size, dtype=np.float64) - (size - 1) / 2
  r = np.hypot(*np.meshgrid(axis, axis))
  with np.errstate(divide="ignore", invalid="ignore"):
    kernel = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
  kernel[size // 2, size // 2] = cutoff**2 / (4 * np.pi)  # the limit at r = 0
  return _normalise(kernel)


def _normalise(kernel):
  return (kernel / kernel.sum()).astype(np.float32)


def _beta(rng, beta_range):
  # BasicSR: half the time below 1, half above (so plateau [1, 2] gives beta=1 half the time).
  low, high = beta_range
  return rng.uniform(low, 1.0) if rng.uniform() < 0.5 else rng.uniform(1.0, high)


def random_blur_kernel(rng, cfg, kernel_sizes, trace=None) -> np.ndarray:
  """One pass's blur kernel: sinc with probability sinc_prob, else a mixed Gaussian type."""
  size = int(rng.choice(kernel_sizes))
  if rng.uniform() < cfg.sinc_prob:
    cutoff = rng.uniform(np.pi / 3 if size < 13 else np.pi / 5, np.pi)
    _log(trace, "blur", type="sinc", size=size, cutoff=cutoff)
    return sinc_kernel(size, cutoff)
  kind = KERNEL_TYPES[rng.choice(len(KERNEL_TYPES),
                                 p=np.asarray(cfg.kernel_probs) / sum(cfg.kernel_probs))]
  sigma_x = rng.uniform(*cfg.blur_sigma)
  if not kind.endswith("aniso"):
    sigma_y, theta = sigma_x, 0.0
  else:
    sigma_y, theta = rng.uniform(*cfg.blur_sigma), rng.uniform(-np.pi, np.pi)
  params = dict(type=kind, size=size, sigma_x=sigma_x, sigma_y=sigma_y, theta=theta)
  if kind.startswith("generalized"):
    params["beta"] = _beta(rng, cfg.betag_range)
    kernel = generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, params["beta"])
  elif kind.startswith("plateau"):
    params["beta"] = _beta(rng, cfg.betap_range)
    kernel = plateau_kernel(size, sigma_x, sigma_y, theta, params["beta"])
  else:
    kernel = gaussian_kernel(size, sigma_x, sigma_y, theta)
  _log(trace, "blur", **params)
  return kernel


def filter2d(image, kernel) -> np.ndarray:
  """Correlation with reflect padding, as BasicSR's filter2D (kernels are point-symmetric)."""
  return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


# ----------------------------------------------------------------------------------- resize


def resize(image, height, width, mode) -> np.ndarray:
  """Resize like torch's F.interpolate(align_corners=False) without antialiasing."""
  height, width = max(1, int(height)), max(1, int(width))
  if image.shape[:2] == (height, width):
    return image
  return cv2.resize(image, (width, height), interpolation=_CV2_INTERPOLATION[mode])


# ------------------------------------------------------------------------------ noise, JPEG


def gaussian_noise(shape, sigma, gray, rng) -> np.ndarray:
  """Noise of std sigma/255, one field shared by the channels when gray."""
  if gray:
    noise = rng.standard_normal(shape[:2], np.float32)[..., None].repeat(shape[2], axis=2)
  else:
    noise = rng.standard_normal(shape, np.float32)
  return (noise * sigma / 255.0).astype(np.float32)


def poisson_noise(image, scale, gray, rng) -> np.ndarray:
  """BasicSR's Poisson noise: counts at 2^ceil(log2(#levels)) levels, times `scale`."""
  if gray:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
  counts = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
  image = counts / 255.0
  levels = 2**np.ceil(np.log2(np.count_nonzero(np.bincount(counts.ravel(), minlength=256))))
  noise = rng.poisson(image * levels) / levels - image
  if gray:
    noise = noise[..., None].repeat(3, axis=2)
  return (noise * scale).astype(np.float32)


def jpeg_encode(image, quality) -> bytes:
  """JPEG bytes (libjpeg, 4:2:0) of a float RGB image in [0, 1]."""
  bgr = np.round(np.clip(image, 0, 1) * 255.0).astype(np.uint8)[..., ::-1]
  ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
  if not ok:
    raise RuntimeError("JPEG encoding failed")
  return data.tobytes()


def jpeg_decode(data) -> np.ndarray:
  bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  return bgr[..., ::-1].astype(np.float32) / 255.0


def jpeg(image, quality) -> np.ndarray:
  return jpeg_decode(jpeg_encode(image, quality))


def usm_sharpen(image, weight=0.5, radius=50, threshold=10.0) -> np.ndarray:
  """BasicSR's unsharp mask: sharpen where the detail exceeds `threshold` gray levels."""
  radius += 1 - radius % 2
  blurred = cv2.GaussianBlur(image, (radius, radius), 0)
  residual = image - blurred
  mask = (np.abs(residual) * 255 > threshold).astype(np.float32)
  soft_mask = cv2.GaussianBlur(mask, (radius, radius), 0)
  sharp = np.clip(image + weight * residual, 0, 1)
  return (soft_mask * sharp + (1 - soft_mask) * image).astype(np.float32)


# --------------------------------------------------------------------------- the model


def _log(trace, op, **params):
  if trace is not None:
    trace.append((op, params))


def _random_resize(image, rng, cfg, resize_modes, base_hw, trace):
  """Up / down / keep by a factor of base_hw (the pass's reference size)."""
  direction = ("up", "down",
               "keep")[rng.choice(3, p=np.asarray(cfg.resize_probs) / sum(cfg.resize_probs))]
  low, high = cfg.resize_range
  factor = {
      "up": lambda: rng.uniform(1.0, high), "down": lambda: rng.uniform(low, 1.0),
      "keep": lambda: 1.0
  }[direction]()
  mode = resize_modes[rng.choice(len(resize_modes))]
  _log(trace, "resize", direction=direction, factor=factor, mode=mode)
  return resize(image, base_hw[0] * factor, base_hw[1] * factor, mode)


def _resize_to_target(image, target_hw, resize_modes, rng, trace):
  """The LR size, by a resize mode drawn from resize_modes."""
  mode = resize_modes[rng.choice(len(resize_modes))]
  _log(trace, "resize_to_target", mode=mode)
  return resize(image, *target_hw, mode)


def _random_noise(image, rng, cfg, trace):
  gray = False
  if rng.uniform() < cfg.gaussian_noise_prob:
    sigma = rng.uniform(*cfg.noise_range)
    gray = rng.uniform() < cfg.gray_noise_prob
    noise = gaussian_noise(image.shape, sigma, gray, rng)
    _log(trace, "gaussian_noise", sigma=sigma, gray=gray)
  else:
    scale = rng.uniform(*cfg.poisson_scale_range)
    gray = rng.uniform() < cfg.gray_noise_prob
    noise = poisson_noise(image, scale, gray, rng)
    _log(trace, "poisson_noise", scale=scale, gray=gray)
  return np.clip(image + noise, 0, 1)


def _random_jpeg(image, rng, cfg, trace):
  quality = int(round(rng.uniform(*cfg.jpeg_range)))
  _log(trace, "jpeg", quality=quality)
  return jpeg(image, quality)


def _realesrgan(image, scale, rng, config, trace):
  h, w = image.shape[:2]
  sizes = tuple(config.kernel_sizes)
  modes = tuple(config.resize_modes)
  # Kernels are drawn first, as the dataset does before the model degrades the batch.
  kernel1 = random_blur_kernel(rng, config.pass1, sizes, trace)
  blur2 = rng.uniform() < config.pass2.blur_prob
  kernel2 = random_blur_kernel(rng, config.pass2, sizes, trace) if blur2 else None
  if rng.uniform() < config.final_sinc_prob:
    cutoff = rng.uniform(np.pi / 3, np.pi)
    final_kernel = sinc_kernel(int(rng.choice(sizes)), cutoff)
    _log(trace, "final_sinc", size=final_kernel.shape[0], cutoff=cutoff)
  else:
    final_kernel = None

  out = filter2d(image, kernel1)
  out = _random_resize(out, rng, config.pass1, modes, (h, w), trace)
  out = _random_noise(out, rng, config.pass1, trace)
  out = _random_jpeg(out, rng, config.pass1, trace)

  if kernel2 is not None:
    out = filter2d(out, kernel2)
  out = _random_resize(out, rng, config.pass2, modes, (h / scale, w / scale), trace)
  out = _random_noise(out, rng, config.pass2, trace)

  def resize_and_sinc(x):
    x = _resize_to_target(x, (h // scale, w // scale), modes, rng, trace)
    return filter2d(x, final_kernel) if final_kernel is not None else x

  if rng.uniform() < 0.5:
    out = _random_jpeg(np.clip(resize_and_sinc(out), 0, 1), rng, config.pass2, trace)
  else:
    out = resize_and_sinc(_random_jpeg(out, rng, config.pass2, trace))
  return out


def _first_order(image, scale, rng, config, trace):
  h, w = image.shape[:2]
  cfg = config.pass1
  if rng.uniform() < cfg.blur_prob:
    image = filter2d(image, random_blur_kernel(rng, cfg, tuple(config.kernel_sizes), trace))
  out = _resize_to_target(image, (h // scale, w // scale), tuple(config.resize_modes), rng, trace)
  return _random_jpeg(_random_noise(out, rng, cfg, trace), rng, cfg, trace)


def degrade_pair(hr, scale, rng, config, trace=None):
  """(target, lr) for one HR image: float32 HxWx3 in [0, 1], H and W divisible by `scale`.

  The LR image is (H/scale)x(W/scale)x3, rounded to 8 bits like a saved LR file. `trace`, a
  list, collects the sampled operations and their parameters.
  """
  h, w = hr.shape[:2]
  if h % scale or w % scale:
    raise UserError(f"HR size {h}x{w} is not divisible by the scale {scale}")
  if config.mode not in DEGRADATION_MODES:
    raise UserError(f"unknown degradation mode '{config.mode}' "
                    f"(choose from {', '.join(DEGRADATION_MODES)})")
  if not 0 <= config.bicubic_prob <= 1:
    raise UserError(f"data.degradation.bicubic_prob={config.bicubic_prob} is not a probability")
  hr = np.asarray(hr, np.float32)
  if config.usm_target:
    hr = usm_sharpen(hr, config.usm_weight, config.usm_radius, config.usm_threshold)
  # The draw only when asked for, so that the other draws stay where they were.
  if config.mode == "bicubic" or (config.bicubic_prob > 0 and rng.uniform() < config.bicubic_prob):
    _log(trace, "bicubic")
    lr = imresize_bicubic(hr, h // scale, w // scale)
  elif config.mode == "first_order":
    lr = _first_order(hr, scale, rng, config, trace)
  else:
    lr = _realesrgan(hr, scale, rng, config, trace)
  lr = np.clip(np.round(lr * 255.0), 0, 255).astype(np.float32) / 255.0
  return hr, lr
