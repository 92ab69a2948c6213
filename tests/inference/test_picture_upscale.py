"""Upscaled files keep their kind: alpha, 16 bits, grey, EXIF orientation, ICC profile, and the
requested scale. Each output is read back by Pillow / OpenCV and compared with a reference made
here by them.

The model is the tools' tiny one with fresh random params and no source noise: it predicts zero
velocity, so its colour output is exactly the bicubic upsampled LR image (jax.image.resize, Keys
a = -0.5 with half-pixel centres, which Pillow's BICUBIC on float images matches to 1e-6). One
tile covers each image, so the references need no tiling.
"""

import cv2
import numpy as np
import pytest
import skimage
from PIL import Image, ImageCms

from linearsr_jax.data.picture import read_picture, write_picture
from linearsr_jax.errors import UserError
from linearsr_jax.inference.picture_upscale import upscale_picture
from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler
from model_helpers import random_trained

H, W = 20, 28  # LR size; the model upscales x4
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="module")
def upscaler():
  return Upscaler(random_trained(lr_source_noise=0.0),
                  UpscaleOptions(tile=32, overlap=8, color_fix="none"))


@pytest.fixture(scope="module")
def photo():
  """float64 [H, W, 3] in [0, 1]: coffee, reduced."""
  return skimage.transform.resize(skimage.data.coffee(), (H, W), anti_aliasing=True)


def pillow_bicubic(channel, size):
  """A float [h, w] channel resized by Pillow (mode F) to size = (height, width)."""
  image = Image.fromarray(np.asarray(channel, np.float32), "F")
  return np.asarray(image.resize(size[::-1], Image.Resampling.BICUBIC))


def reference(colour, size):
  return np.clip(np.dstack([pillow_bicubic(colour[..., c], size) for c in range(3)]), 0, 1)


def upscale_file(upscaler, source, target, outscale=None, quality=None):
  write_picture(target, upscale_picture(upscaler, read_picture(source), outscale=outscale), quality)


def test_rgba_keeps_its_alpha_resized_bicubically(tmp_path, upscaler, photo):
  y, x = np.mgrid[:H, :W]
  alpha = np.clip(1.5 - np.hypot(y - H / 2, x - W / 2) / 8, 0, 1)  # an opaque disc, soft edge
  rgba = np.dstack([photo, alpha])
  Image.fromarray(np.round(rgba * 255).astype(np.uint8), "RGBA").save(tmp_path / "in.png")
  upscale_file(upscaler, tmp_path / "in.png", tmp_path / "out.png")
  out = Image.open(tmp_path / "out.png")
  assert out.mode == "RGBA" and out.size == (4 * W, 4 * H)
  out = np.asarray(out) / 255
  lr = np.asarray(Image.open(tmp_path / "in.png")) / 255
  # alpha: Pillow's bicubic of the LR alpha; the project's bicubic (MATLAB's) pads the border
  # symmetrically where Pillow renormalises, which moves the outer 8 output pixels a little
  expected = np.clip(pillow_bicubic(lr[..., 3], (4 * H, 4 * W)), 0, 1)
  error = np.abs(out[..., 3] - expected)
  assert error[8:-8, 8:-8].max() <= 0.6 / 255 and error.max() < 0.05
  # the colour went through the model as it is stored, not composited onto white
  assert np.abs(out[..., :3] - reference(lr[..., :3], (4 * H, 4 * W))).max() <= 0.6 / 255


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bits_stay_16_bits(tmp_path, upscaler, suffix):
  # A gradient whose steps are far finer than 8 bits: written at 8 bits, the output would be
  # off by up to 1/510 and its values all multiples of 257.
  y, x = np.mgrid[:H, :W]
  lr = np.dstack([0.4 + 0.002 * y / H, 0.5 + 0.003 * x / W, 0.45 + 0.001 * (x + y) / (H + W)])
  lr16 = np.round(lr * 65535).astype(np.uint16)
  assert cv2.imwrite(str(tmp_path / f"in{suffix}"), lr16[..., ::-1])  # OpenCV: BGR
  upscale_file(upscaler, tmp_path / f"in{suffix}", tmp_path / f"out{suffix}")
  out = cv2.imread(str(tmp_path / f"out{suffix}"), cv2.IMREAD_UNCHANGED)
  assert out.dtype == np.uint16 and out.shape == (4 * H, 4 * W, 3)
  assert np.any(out % 257)
  expected = reference(lr16 / 65535, (4 * H, 4 * W))
  assert np.abs(out[..., ::-1] / 65535 - expected).max() < 2 / 65535


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_grey_stays_grey(tmp_path, upscaler, photo, mode):
  grey = photo @ [0.299, 0.587, 0.114]
  top = 255 if mode == "L" else 65535
  stored = np.round(grey * top).astype(np.uint8 if mode == "L" else np.uint16)
  Image.fromarray(stored).save(tmp_path / "in.png")
  assert Image.open(tmp_path / "in.png").mode == mode
  upscale_file(upscaler, tmp_path / "in.png", tmp_path / "out.png")
  out = Image.open(tmp_path / "out.png")
  assert out.mode == mode and out.size == (4 * W, 4 * H)
  expected = np.clip(pillow_bicubic(stored / top, (4 * H, 4 * W)), 0, 1)
  assert np.abs(np.asarray(out) / top - expected).max() <= 0.6 / 255


def test_exif_orientation_is_applied_and_the_icc_profile_kept(tmp_path, upscaler, photo):
  upright = Image.fromarray(np.round(photo * 255).astype(np.uint8))
  upright.save(tmp_path / "upright.png", icc_profile=SRGB)
  exif = Image.Exif()
  exif[0x0112] = 6  # stored turned left: shown after a quarter turn clockwise
  upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.png", exif=exif,
                                                    icc_profile=SRGB)
  for name in ("upright", "rotated"):
    upscale_file(upscaler, tmp_path / f"{name}.png", tmp_path / f"{name}_x4.png")
  rotated = Image.open(tmp_path / "rotated_x4.png")
  assert rotated.size == (4 * W, 4 * H) and rotated.info["icc_profile"] == SRGB
  assert np.array_equal(np.asarray(rotated), np.asarray(Image.open(tmp_path / "upright_x4.png")))


@pytest.mark.parametrize("outscale", [2.5, 1.0, 0.3])
def test_any_output_scale(tmp_path, upscaler, photo, outscale):
  lr = np.round(photo * 255).astype(np.uint8)
  Image.fromarray(lr).save(tmp_path / "in.png")
  upscale_file(upscaler, tmp_path / "in.png", tmp_path / "out.png", outscale=outscale)
  out = Image.open(tmp_path / "out.png")
  size = round(outscale * H), round(outscale * W)
  assert out.size == size[::-1]
  # the x4 bicubic image, resized by Pillow's antialiased bicubic: the same photograph
  x4 = np.asarray(Image.fromarray(lr).resize((4 * W, 4 * H), Image.Resampling.BICUBIC))
  expected = np.asarray(Image.fromarray(x4).resize(size[::-1], Image.Resampling.BICUBIC)) / 255
  error = np.abs(np.asarray(out) / 255 - expected)
  assert error.mean() < 0.01 and error.max() < 0.1


def test_a_bad_output_scale_is_one_line(upscaler, photo):
  from linearsr_jax.data.picture import Picture
  with pytest.raises(UserError, match="--outscale 0.01 makes 28x20 smaller than one pixel"):
    upscale_picture(upscaler, Picture(photo.astype(np.float32)), outscale=0.01)


@pytest.mark.parametrize("suffix, mode", [(".jpg", "RGB"), (".webp", "RGBA"), (".tiff", "RGBA")])
def test_output_formats(tmp_path, upscaler, photo, suffix, mode):
  """JPEG has no alpha: there the colour is composited on white; WebP and TIFF keep it."""
  rgba = np.dstack([photo, np.full((H, W), 0.5)])
  Image.fromarray(np.round(rgba * 255).astype(np.uint8), "RGBA").save(tmp_path / "in.png")
  upscale_file(upscaler, tmp_path / "in.png", tmp_path / f"out{suffix}", quality=90)
  out = Image.open(tmp_path / f"out{suffix}")
  assert out.format == {".jpg": "JPEG", ".webp": "WEBP", ".tiff": "TIFF"}[suffix]
  assert out.mode == mode and out.size == (4 * W, 4 * H)
  lr = np.asarray(Image.open(tmp_path / "in.png")) / 255
  colour = reference(lr[..., :3], (4 * H, 4 * W))
  alpha = np.clip(pillow_bicubic(lr[..., 3], (4 * H, 4 * W)), 0, 1)[..., None]
  expected = colour * alpha + 1 - alpha if mode == "RGB" else np.dstack([colour, alpha])
  assert np.abs(np.asarray(out) / 255 - expected).mean() < 0.02


@pytest.fixture
def mixed_folder(tmp_path, photo):
  """RGBA, 16-bit RGB, grey, EXIF-turned and plain JPEG photographs, and a corrupt file."""
  src = tmp_path / "in"
  src.mkdir()
  photo8 = np.round(photo * 255).astype(np.uint8)
  alpha = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
  Image.fromarray(np.dstack([photo8, alpha]), "RGBA").save(src / "rgba.png")
  cv2.imwrite(str(src / "deep.png"), np.round(photo[..., ::-1] * 65535).astype(np.uint16))
  Image.fromarray(photo8).convert("L").save(src / "grey.png")
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(photo8).transpose(Image.Transpose.ROTATE_90).save(src / "turned.png", exif=exif)
  Image.fromarray(photo8).save(src / "plain.jpg", quality=95)
  (src / "corrupt.png").write_bytes((src / "grey.png").read_bytes()[:60])
  return src


@pytest.mark.slow
def test_a_mixed_folder_through_the_cli(tmp_path, tmp_path_factory, mixed_folder, photo):
  """`upscale --outscale 2 --format input`: every output of the input's kind at twice its size,
  the corrupt file one line, the inputs untouched, exit 1."""
  from linearsr_jax.commands.cli import main
  from trained_run import trained_run
  before = {p.name: p.read_bytes() for p in mixed_folder.iterdir()}
  out = tmp_path / "out"
  assert main([
      "upscale",
      str(mixed_folder), "--checkpoint",
      str(trained_run(tmp_path_factory)), "--out",
      str(out), "--outscale", "2", "--format", "input", "--no_progress"
  ]) == 1
  assert {p.name: p.read_bytes() for p in mixed_folder.iterdir()} == before
  assert sorted(p.name for p in out.iterdir()) == [
      "deep_x2.png", "grey_x2.png", "plain_x2.jpg", "rgba_x2.png", "turned_x2.png"
  ]
  expected = {"deep": "RGB", "grey": "L", "plain": "RGB", "rgba": "RGBA", "turned": "RGB"}
  for name, mode in expected.items():
    image = Image.open(next(out.glob(f"{name}_x2.*")))
    assert image.size == (2 * W, 2 * H) and image.mode == mode, name
  deep = cv2.imread(str(out / "deep_x2.png"), cv2.IMREAD_UNCHANGED)
  assert deep.dtype == np.uint16 and np.any(deep % 257)
  # an almost untrained model: near the bicubic image, the right way up
  photo2 = reference(photo, (2 * H, 2 * W))
  turned = np.asarray(Image.open(out / "turned_x2.png")) / 255
  assert np.abs(turned - photo2).mean() < 0.05
  assert np.abs(deep[..., ::-1] / 65535 - photo2).mean() < 0.05
  rgba = np.asarray(Image.open(out / "rgba_x2.png")) / 255
  alpha = np.clip(pillow_bicubic(np.tile(np.linspace(0, 1, W), (H, 1)), (2 * H, 2 * W)), 0, 1)
  assert np.abs(rgba[..., 3] - alpha).max() < 0.02


def test_eval_reads_turned_transparent_and_16_bit_lr_images(tmp_path, photo_pairs):
  """`eval --lr_dir` reads LR images as upscale does: an EXIF-turned, an opaque RGBA and a
  16-bit copy of each LR image score as the plain one does (to 16-bit rounding)."""
  import json

  from linearsr_jax.commands.cli import main

  def scores(lr_dir):
    out = tmp_path / f"report_{lr_dir.name}"
    assert main([
        "eval", "--lr_dir",
        str(lr_dir), "--hr_dir",
        str(photo_pairs / "HR"), "--out",
        str(out), "--metrics", "psnr_rgb", "--no_progress"
    ]) == 0
    return json.loads((out / "summary.json").read_text())["mean"]["psnr_rgb"]

  exif = Image.Exif()
  exif[0x0112] = 8  # stored turned right: a quarter turn anticlockwise shows it upright
  for kind in ("turned", "rgba", "deep"):
    (tmp_path / kind).mkdir()
  for path in (photo_pairs / "LR").iterdir():
    lr = Image.open(path)
    lr.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "turned" / path.name, exif=exif)
    lr.convert("RGBA").save(tmp_path / "rgba" / path.name)
    cv2.imwrite(str(tmp_path / "deep" / path.name),
                np.asarray(lr)[..., ::-1].astype(np.uint16) * 257)
  plain = scores(photo_pairs / "LR")
  assert scores(tmp_path / "turned") == plain and scores(tmp_path / "rgba") == plain
  assert scores(tmp_path / "deep") == pytest.approx(plain, abs=1e-3)
