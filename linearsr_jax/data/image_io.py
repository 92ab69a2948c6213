"""Reading and writing images as float32 RGB arrays in [0, 1].

`read_image` accepts PNG, JPEG, WebP, BMP and TIFF in 8 or 16 bits, grayscale, palette and
alpha images, and applies the EXIF orientation. Transparent pixels are composited on WHITE
(the usual look of a transparent image on a page), so the result always has 3 channels.
Pillow reduces 16-bit colour PNG / TIFF to 8 bits, so those are decoded with OpenCV.
`decode_pixels` gives the upright pixels as stored (depth, channels, alpha) with the file's ICC
profile, and `encode_image` writes 8- or 16-bit grey, grey + alpha, RGB or RGBA with one
(data/picture.py keeps a file's look through upscaling with them).
"""

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from linearsr_jax import storage
from linearsr_jax.atomic import write_atomically
from linearsr_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# suffix -> Pillow's format name, for writing
_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
    ".tiff": "TIFF", ".bmp": "BMP"
}
_LOSSY = ("JPEG", "WEBP")
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the array operation that shows the image upright (as PIL's
# ImageOps.exif_transpose, written for arrays so it works on 16-bit data too).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def is_image_path(path) -> bool:
  return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(root, recursive=True) -> list:
  """Sorted image paths under `root` (by suffix; hidden files such as `._x.jpg` are skipped)."""
  root = storage.path(root)
  if not root.is_dir():
    raise UserError(f"{root}: not a directory")
  return [
      p for p in storage.files(root, recursive)
      if is_image_path(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
  ]


def _sixteen_bit_colour(im: Image.Image, data: bytes) -> bool:
  """True for 16-bit colour PNG / TIFF files, which Pillow would silently cut to 8 bits."""
  if im.mode not in ("RGB", "RGBA"):
    return False
  if im.format == "PNG":
    # IHDR data starts at byte 16: width, height (4 bytes each), then the bit depth.
    return data[24:25] == b"\x10"
  if im.format == "TIFF":
    bits = im.tag_v2.get(258, (8,))
    return max(bits if isinstance(bits, tuple) else (bits,)) > 8
  return False


def _decode_with_opencv(data: bytes, path) -> np.ndarray:
  import cv2

  array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if array is None:
    raise UserError(f"{path}: unreadable or truncated image")
  if array.ndim == 3:  # OpenCV orders channels BGR(A).
    array = array[..., [2, 1, 0, 3][:array.shape[-1]]]
  return array


def _decode_with_pillow(im: Image.Image) -> np.ndarray:
  if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    array = np.asarray(im)
    if im.mode == "F":  # Float TIFF: taken as already in [0, 1].
      return np.clip(array, 0.0, 1.0).astype(np.float32)
    return np.clip(array, 0, 65535).astype(np.uint16)
  has_alpha = "A" in im.mode or "a" in im.mode or "transparency" in im.info
  if im.mode == "1" or (im.mode == "L" and not has_alpha):
    return np.asarray(im.convert("L"))
  if im.mode in ("L", "LA"):
    return np.asarray(im.convert("LA"))
  return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))


def _to_rgb_float(array: np.ndarray) -> np.ndarray:
  """uint8 / uint16 / float array with 1-4 channels -> float32 HxWx3, alpha on white."""
  if array.dtype == np.uint8:
    x = array.astype(np.float32) / 255.0
  elif array.dtype == np.uint16:
    x = array.astype(np.float32) / 65535.0
  else:
    x = array.astype(np.float32)
  if x.ndim == 2:
    x = x[..., None]
  if x.shape[-1] in (2, 4):
    colour, alpha = x[..., :-1], x[..., -1:]
    x = colour * alpha + (1.0 - alpha)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  return np.ascontiguousarray(x)


def read_image(path) -> np.ndarray:
  """Reads an image file as float32 HxWx3 RGB in [0, 1] (upright, alpha on white).

  Raises UserError for missing, unreadable, truncated or non-image files.
  """
  path = storage.path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
  return decode_image(data, path)


def decode_image(data: bytes, name="image") -> np.ndarray:
  """Like read_image, for the bytes of an encoded file; `name` labels error messages."""
  return _to_rgb_float(decode_pixels(data, name)[0])


def decode_pixels(data: bytes, name="image") -> tuple[np.ndarray, bytes | None]:
  """(upright pixels as stored, ICC profile or None) of an encoded file. The pixels are uint8,
  uint16 or float32 [0, 1]: HxW grey, or HxWxC with C = 2 (grey, alpha), 3 (RGB) or 4 (RGBA)."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
      icc_profile = im.info.get("icc_profile") or None
      if _sixteen_bit_colour(im, data):
        array = _decode_with_opencv(data, name)
      else:
        im.load()
        array = _decode_with_pillow(im)
  except UnidentifiedImageError:
    raise UserError(f"{name}: not an image file") from None
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise UserError(f"{name}: unreadable or truncated image ({e})") from None
  if orientation in _ORIENT:
    array = _ORIENT[orientation](array)
  return np.ascontiguousarray(array), icc_profile


def image_size(path) -> tuple:
  """(height, width) of an upright image from its header alone (no pixel decoding)."""
  try:
    with storage.path(path).open("rb") as f, Image.open(f) as im:
      width, height = im.size
      if im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
        width, height = height, width
  except UnidentifiedImageError:
    raise UserError(f"{path}: not an image file") from None
  except Image.DecompressionBombError as e:  # Pillow's own limit, far above a sane photo's
    raise UserError(f"{path}: refused: {e}") from None
  except (OSError, ValueError, SyntaxError) as e:
    raise UserError(f"{path}: unreadable image ({e})") from None
  return height, width


def to_uint8(array, rows: int = 256) -> np.ndarray:
  """Float image in [0, 1] -> uint8 with rounding (uint8 input passes through), `rows` rows at
  a time: no float temporary the size of the image."""
  return to_integers(array, np.uint8, rows)


def to_integers(array, dtype, rows: int = 256) -> np.ndarray:
  """Float image in [0, 1] -> uint8 or uint16 with rounding, `rows` rows at a time; integer
  input passes through, or is rounded from 16 to 8 bits."""
  array, dtype = np.asarray(array), np.dtype(dtype)
  if array.dtype == dtype:
    return array
  if array.dtype == np.uint16 and dtype == np.uint8:
    return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
  top = np.iinfo(dtype).max
  out = np.empty(array.shape, dtype)
  for start in range(0, len(array), rows):
    out[start:start + rows] = np.round(np.clip(array[start:start + rows], 0.0, 1.0) * top)
  return out


def encode_image(array, suffix: str, quality=None, icc_profile: bytes | None = None) -> bytes:
  """PNG, JPEG, WebP, TIFF or BMP bytes of an image: float [0, 1] (written as 8 bits), uint8 or
  uint16; HxW grey or HxWxC, C = 2 (grey, alpha), 3 or 4. 16 bits stay 16 bits in PNG and TIFF
  (16-bit grey + alpha as RGBA, which the readers know) and are rounded to 8 in the others.
  `quality`: JPEG / WebP (default 95); `icc_profile` is embedded. JPEG and BMP hold no alpha:
  give them 1 or 3 channels."""
  format_ = _FORMATS.get(suffix.lower())
  if format_ is None:
    raise UserError(f"cannot write '{suffix}' images: use {', '.join(_FORMATS)}")
  array = np.asarray(array)
  if array.dtype == np.uint16 and array.ndim == 3 and array.shape[-1] == 2:
    array = array[..., [0, 0, 0, 1]]  # OpenCV and Pillow read no 16-bit grey + alpha: as RGBA
  if array.dtype == np.uint16 and format_ == "PNG":
    return _png16(array, icc_profile)
  if array.dtype == np.uint16 and format_ == "TIFF":
    return _tiff16(array, icc_profile)
  options = {"quality": int(quality or 95)} if format_ in _LOSSY else {}
  if icc_profile:
    options["icc_profile"] = icc_profile
  buffer = io.BytesIO()
  Image.fromarray(to_uint8(array)).save(buffer, format=format_, **options)
  return buffer.getvalue()


def _png16(array, icc_profile) -> bytes:
  """A 16-bit PNG (Pillow writes 16 bits for grey only) by OpenCV, with an iCCP chunk added."""
  import cv2

  if array.ndim == 3:
    array = array[..., [2, 1, 0, 3][:array.shape[-1]]]  # OpenCV orders channels BGR(A)
  ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
  if not ok:
    raise UserError(f"OpenCV could not encode a {array.shape} 16-bit PNG")
  data = encoded.tobytes()
  if not icc_profile:
    return data
  payload = b"ICC profile\0\0" + zlib.compress(icc_profile)  # name, compression method 0
  chunk = struct.pack(">I", len(payload)) + b"iCCP" + payload + struct.pack(
      ">I", zlib.crc32(b"iCCP" + payload))
  header_end = 8 + 25  # the signature, then IHDR (length, type, 13 bytes, CRC)
  return data[:header_end] + chunk + data[header_end:]


def _tiff16(array, icc_profile) -> bytes:
  import tifffile

  buffer = io.BytesIO()
  extra = [(34675, 7, None, icc_profile, True)] if icc_profile else []  # tag 34675: ICC
  tifffile.imwrite(buffer, array, photometric="minisblack" if array.ndim == 2 else "rgb",
                   extrasamples=[2] if array.ndim == 3 and array.shape[-1] == 4 else None,
                   extratags=extra, compression="zlib")
  return buffer.getvalue()


def write_image(path, array, quality=None, icc_profile: bytes | None = None) -> None:
  """Writes an image atomically (encode_image); the format follows the suffix."""
  path = storage.path(path)
  data = encode_image(array, path.suffix, quality, icc_profile)
  write_atomically(path, data)
  if not storage.is_url(path):
    os.chmod(path, 0o644)
