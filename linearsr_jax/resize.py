"""Every bicubic resize of the project, in one place: MATLAB's antialiased imresize in NumPy (the
classic-SR LR images, the bicubic baselines, the colour fix's reference) and the JAX up-sampling
for the LR-anchored flow source and the sampler's start point."""

import math

import jax
import numpy as np


def upsample_bicubic(images, scale: int):
  """[B, h, w, C] -> [B, h·s, w·s, C], Keys cubic (a = -0.5), half-pixel centres."""
  b, h, w, c = images.shape
  return jax.image.resize(images, (b, h * scale, w * scale, c), method="bicubic")


def _cubic(x):
  """Keys cubic with a = -0.5 (MATLAB's imresize)."""
  ax = np.abs(x)
  return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) *
          ((ax > 1) & (ax <= 2)))


def _imresize_taps(in_len, out_len, start=0, stop=None):
  """(output index, input index, weight) triples of MATLAB's antialiased bicubic imresize along
  one axis, for outputs [start, stop) (default: all); an input index may repeat for one output
  (symmetric padding at the borders): its weights add up."""
  stop = out_len if stop is None else stop
  scale = out_len / in_len
  width = 4.0 / min(scale, 1.0)
  out = np.arange(start + 1, stop + 1, dtype=np.float64)
  centre = out / scale + 0.5 * (1 - 1 / scale)  # in 1-based input coordinates
  taps = np.floor(centre - width / 2)[:, None] + np.arange(math.ceil(width) + 2)[None]
  distance = centre[:, None] - taps
  weights = min(scale, 1.0) * _cubic(min(scale, 1.0) * distance)
  weights /= weights.sum(1, keepdims=True)
  # Symmetric padding at the borders, as MATLAB.
  mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
  index = mirror[np.mod(taps.astype(np.int64) - 1, 2 * in_len)]
  return np.repeat(np.arange(stop - start), taps.shape[1]), index.ravel(), weights.ravel()


def _imresize_matrix(in_len, out_len) -> np.ndarray:
  """out_len x in_len weights of MATLAB's antialiased bicubic imresize along one axis."""
  rows, columns, weights = _imresize_taps(in_len, out_len)
  matrix = np.zeros((out_len, in_len))
  np.add.at(matrix, (rows, columns), weights)
  return matrix


def imresize_bicubic(image, height, width) -> np.ndarray:
  """MATLAB-style antialiased bicubic resize (the classic-SR LR images)."""
  rows = _imresize_matrix(image.shape[0], height)
  cols = _imresize_matrix(image.shape[1], width)
  # Stacked matmuls over the other axis: several times faster here than one big BLAS call,
  # whose threads stall when the cores are shared with workers or the train step.
  image = np.asarray(image, np.float32)
  out = np.matmul(rows.astype(np.float32), image.transpose(1, 0, 2))  # [w, out_h, c]
  return np.matmul(cols.astype(np.float32), out.transpose(1, 0, 2))  # [out_h, out_w, c]


def imresize_bicubic_rows(image, height, width, start, stop) -> np.ndarray:
  """Rows [start, stop) of imresize_bicubic(image, height, width) (equal up to float32
  round-off), in memory of the order of those rows: only the input rows they need are read, and
  the width weights are a sparse matrix, not a dense out_w x w one (1 GB for a 24 MP photo x4)."""
  from scipy import sparse

  h, w, c = image.shape
  rows, inputs, weights = _imresize_taps(h, height, start, stop)
  low, high = inputs.min(), inputs.max() + 1
  row_matrix = np.zeros((stop - start, high - low))
  np.add.at(row_matrix, (rows, inputs - low), weights)
  band = np.matmul(row_matrix.astype(np.float32),
                   np.asarray(image[low:high], np.float32).transpose(1, 0, 2))  # [w, band, c]
  out_x, in_x, weights_x = _imresize_taps(w, width)
  col_matrix = sparse.csr_matrix((weights_x.astype(np.float32), (out_x, in_x)), shape=(width, w))
  out = col_matrix @ band.reshape(w, -1)  # [out_w, band·c]
  return out.reshape(width, stop - start, c).transpose(1, 0, 2)


def imresize_bicubic_in_bands(image, height, width, rows: int = 256) -> np.ndarray:
  """imresize_bicubic(image, height, width) as float32, made `rows` output rows at a time
  (imresize_bicubic_rows): no dense weight matrix or float64 copy of the image's size."""
  image = np.asarray(image, np.float32)
  out = np.empty((height, width, image.shape[2]), np.float32)
  for start in range(0, height, rows):
    stop = min(start + rows, height)
    out[start:stop] = imresize_bicubic_rows(image, height, width, start, stop)
  return out
