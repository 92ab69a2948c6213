"""An image file as upscaling keeps it: its colour for the model, and what the output must keep.

`read_picture` splits a file into float32 RGB colour in [0, 1] (grey repeated over the three
channels), its alpha (float32 in [0, 1], or None), whether it is grey, its bit depth (16 for
16-bit and float files, else 8) and its ICC profile; EXIF orientation is applied.
`write_picture` writes a picture back in the same kind: grey as grey (the colour's BT.601 luma,
as Pillow's convert("L")), alpha kept, 16 bits as 16 bits where the format holds them (PNG,
TIFF), the ICC profile embedded. JPEG holds no alpha: there the colour is composited on white.
"""

import dataclasses

import numpy as np

from linearsr_jax import storage
from linearsr_jax.data.image_io import decode_pixels, to_integers, write_image
from linearsr_jax.errors import UserError

# Pillow's convert("L") weights (ITU-R BT.601 luma)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Output formats that hold an alpha channel
_ALPHA_SUFFIXES = (".png", ".webp", ".tif", ".tiff")


@dataclasses.dataclass
class Picture:
  colour: np.ndarray  # float32 [H, W, 3] in [0, 1]
  alpha: np.ndarray | None = None  # float32 [H, W] in [0, 1]
  grey: bool = False
  bits: int = 8
  icc_profile: bytes | None = None


def read_picture(path) -> Picture:
  """The picture of an image file (UserError for a missing, unreadable or non-image file)."""
  path = storage.path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
  pixels, icc_profile = decode_pixels(data, path)
  bits = 8 if pixels.dtype == np.uint8 else 16
  x = pixels.astype(np.float32)
  if pixels.dtype != np.float32:
    x /= np.iinfo(pixels.dtype).max
  if x.ndim == 2:
    x = x[..., None]
  alpha = None
  if x.shape[-1] in (2, 4):
    x, alpha = x[..., :-1], np.ascontiguousarray(x[..., -1])
  grey = x.shape[-1] == 1
  colour = np.ascontiguousarray(np.repeat(x, 3, axis=-1) if grey else x)
  return Picture(colour, alpha, grey, bits, icc_profile)


def write_picture(path, picture: Picture, quality=None) -> None:
  """Writes `picture` atomically in the format of the suffix, as the module says."""
  path = storage.path(path)
  colour, alpha = picture.colour, picture.alpha
  if alpha is not None and path.suffix.lower() not in _ALPHA_SUFFIXES:
    colour, alpha = _on_white(colour, alpha), None
  if picture.grey:
    colour = colour @ LUMA
  dtype = np.uint16 if picture.bits == 16 else np.uint8
  pixels = to_integers(colour, dtype)
  if alpha is not None:
    pixels = np.dstack([pixels, to_integers(alpha, dtype)])
  write_image(path, pixels, quality, picture.icc_profile)


def _on_white(colour, alpha):
  return colour * alpha[..., None] + (1 - alpha[..., None])
