"""read_image / write_image against Pillow, OpenCV and hand-computed pixel values."""

import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from linearsr_jax.data import image_io
from linearsr_jax.errors import UserError


@pytest.fixture
def rgb8():
  return np.random.default_rng(0).integers(0, 256, (12, 17, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix,fmt", [(".png", "PNG"), (".bmp", "BMP"), (".tif", "TIFF"),
                                        (".webp", "WEBP")])
def test_lossless_8bit_formats(tmp_path, rgb8, suffix, fmt):
  path = tmp_path / f"a{suffix}"
  Image.fromarray(rgb8).save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
  x = image_io.read_image(path)
  assert x.dtype == np.float32 and x.shape == (12, 17, 3)
  np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8), rgb8)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_colour_keeps_all_bits(tmp_path, suffix):
  rgb16 = np.random.default_rng(1).integers(0, 65536, (9, 11, 3), dtype=np.uint16)
  path = tmp_path / f"a{suffix}"
  cv2.imwrite(str(path), rgb16[..., ::-1])  # OpenCV writes BGR.
  x = image_io.read_image(path)
  np.testing.assert_allclose(x, rgb16 / 65535.0, atol=1e-7)


def test_16bit_gray(tmp_path):
  gray16 = np.random.default_rng(2).integers(0, 65536, (9, 11), dtype=np.uint16)
  path = tmp_path / "g.png"
  cv2.imwrite(str(path), gray16)
  x = image_io.read_image(path)
  for c in range(3):
    np.testing.assert_allclose(x[..., c], gray16 / 65535.0, atol=1e-7)


def test_rgba_is_composited_on_white(tmp_path):
  rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 51]]], np.uint8)
  path = tmp_path / "a.png"
  Image.fromarray(rgba, "RGBA").save(path)
  x = image_io.read_image(path)
  # opaque red; fully transparent -> white; 20% blue over white.
  expected = np.array([[[1, 0, 0], [1, 1, 1], [0.8, 0.8, 1.0]]], np.float32)
  np.testing.assert_allclose(x, expected, atol=1e-6)


def test_palette_with_transparency(tmp_path):
  im = Image.new("P", (4, 2))
  im.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
  im.putpixel((1, 0), 1)
  im.info["transparency"] = 0
  path = tmp_path / "p.png"
  im.save(path, transparency=0)
  x = image_io.read_image(path)
  np.testing.assert_allclose(x[0, 1], np.array([10, 20, 30]) / 255.0, atol=1e-6)
  np.testing.assert_allclose(x[1, 1], [1, 1, 1], atol=1e-6)  # index 0 is transparent


def test_grayscale_jpeg(tmp_path):
  gray = np.random.default_rng(3).integers(0, 256, (16, 16), dtype=np.uint8)
  path = tmp_path / "g.jpg"
  Image.fromarray(gray).save(path, quality=90)
  x = image_io.read_image(path)
  reference = np.asarray(Image.open(path)) / 255.0
  for c in range(3):
    np.testing.assert_allclose(x[..., c], reference, atol=1e-6)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, rgb8, orientation):
  im = Image.fromarray(rgb8)
  exif = Image.Exif()
  exif[0x0112] = orientation
  path = tmp_path / "r.png"
  im.save(path, exif=exif)
  upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
  x = image_io.read_image(path)
  np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8), upright)


def test_bad_files_raise_user_error(tmp_path, rgb8):
  good = tmp_path / "good.jpg"
  Image.fromarray(rgb8).save(good)
  truncated = tmp_path / "cut.jpg"
  truncated.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
  text = tmp_path / "text.png"
  text.write_text("not an image\n")
  for path, words in [(truncated, "truncated"), (text, "not an image"),
                      (tmp_path / "missing.png", "cannot read")]:
    with pytest.raises(UserError, match=words) as info:
      image_io.read_image(path)
    assert "\n" not in str(info.value)


def test_write_png_round_trip_and_atomic(tmp_path):
  x = np.random.default_rng(4).random((10, 7, 3)).astype(np.float32)
  path = tmp_path / "sub" / "out.png"
  image_io.write_image(path, x)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), np.round(x * 255).astype(np.uint8))
  assert os.listdir(path.parent) == ["out.png"]  # no temporary file left behind
  with pytest.raises(UserError, match="cannot write"):
    image_io.write_image(tmp_path / "out.gif", x)


def test_write_jpeg_uses_quality(tmp_path):
  x = np.random.default_rng(5).random((32, 32, 3))
  image_io.write_image(tmp_path / "lo.jpg", x, quality=20)
  image_io.write_image(tmp_path / "hi.jpg", x, quality=95)
  assert (tmp_path / "lo.jpg").stat().st_size < (tmp_path / "hi.jpg").stat().st_size
  assert Image.open(tmp_path / "lo.jpg").format == "JPEG"


def test_list_images(tmp_path, rgb8):
  (tmp_path / "b" / "c").mkdir(parents=True)
  for name in ["z.PNG", "b/a.jpg", "b/c/d.webp", "notes.txt", "._mac.jpg", "b/x.jpeg"]:
    (tmp_path / name).write_bytes(b"x")
  found = [p.relative_to(tmp_path).as_posix() for p in image_io.list_images(tmp_path)]
  assert found == ["b/a.jpg", "b/c/d.webp", "b/x.jpeg", "z.PNG"]
  flat = [p.name for p in image_io.list_images(tmp_path, recursive=False)]
  assert flat == ["z.PNG"]
  with pytest.raises(UserError):
    image_io.list_images(tmp_path / "nope")
