"""Smoothing a noisy validation curve (LOWESS, EMA) and measuring its noise; numpy only."""

import math

import numpy as np

# LOWESS rows fitted at once: bounds its memory to this many x len(curve) floats per array.
_LOWESS_ROWS = 512
# A second difference of white noise has variance 6σ².
_SECOND_DIFF_SCALE = math.sqrt(6.0)


def smooth(steps, values, smoothing) -> np.ndarray:
  """Smoothed copy of `values` by `smoothing.method` (the `esgf.smoothing` config)."""
  values = np.asarray(values, dtype=np.float64)
  if smoothing.method == "none" or len(values) < 3:
    return values.copy()
  if smoothing.method == "ema":
    return ema(values, 2.0 / (smoothing.window + 1.0))
  return lowess(np.asarray(steps, dtype=np.float64), values,
                _lowess_neighbours(len(values), smoothing), smoothing.robust_iters,
                smoothing.degree)


def _lowess_neighbours(n, smoothing):
  return max(smoothing.window, math.ceil(smoothing.frac * n))


def averaged_points(n, smoothing) -> int:
  """About how many raw points each smoothed value of an n-point curve averages (its noise
  is sigma/sqrt of that)."""
  return {"none": 1, "ema": smoothing.window,
          "lowess": _lowess_neighbours(n, smoothing)}[smoothing.method]


def ema(values, alpha) -> np.ndarray:
  """Causal exponential moving average started at the first value (TensorBoard-style)."""
  out = np.empty(len(values))
  acc = values[0]
  for i, v in enumerate(values):
    acc = alpha * v + (1.0 - alpha) * acc
    out[i] = acc
  return out


def lowess(x, y, neighbours, robust_iters, degree=2) -> np.ndarray:
  """Cleveland's LOWESS: local polynomial fits (`degree` 1 or 2) over the `neighbours`
  nearest x with tricube weights, then bisquare re-weighting of residuals beyond 6 x median
  |residual| `robust_iters` times (numpy; O(n²) time, memory bounded by row blocks).
  Degree 2 follows the bend of a saturating curve, where a local line cuts the corner and
  moves the knee."""
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  k = min(max(neighbours, degree + 2), len(y))
  robust = np.ones(len(y))
  for _ in range(robust_iters + 1):
    fit = np.concatenate([
        _local_fits(x, y, rows, robust, k, degree)
        for rows in np.array_split(np.arange(len(y)), max(1,
                                                          len(y) // _LOWESS_ROWS))
    ])
    residual = y - fit
    scale = 6.0 * float(np.median(np.abs(residual)))
    # As in R's lowess: residuals of ~0 (a noiseless curve) leave nothing to re-weight; a
    # median of ~0 would call every point of a clean bend an outlier.
    if scale <= 1e-7 * float(np.mean(np.abs(y))):
      break
    robust = np.clip(1.0 - (residual / scale)**2, 0.0, None)**2
  return fit


def _local_fits(x, y, rows, robust, k, degree):
  """LOWESS values at x[rows]: weighted polynomial fits in u = (x_j - x_i) / radius_i,
  whose constant term is the fit at x_i; the normal equations need only the weighted
  moments sum_j w_ij u_ij^p."""
  dist = np.abs(x[None, :] - x[rows, None])
  radius = np.sort(dist, axis=1)[:, k - 1] * 1.0001 + 1e-12
  local = np.clip(1.0 - (dist / radius[:, None])**3, 0.0, None)**3
  w = local * robust[None, :]
  alone = (w > 0).sum(1) <= degree  # too few neighbours left: keep the plain local fit
  w[alone] = local[alone]
  u = (x[None, :] - x[rows, None]) / radius[:, None]
  moments, weighted = [], w
  for _ in range(2 * degree + 1):
    moments.append(weighted.sum(1))
    weighted = weighted * u
  gram = np.stack(moments, axis=-1)[:, np.add.outer(np.arange(degree + 1), np.arange(degree + 1))]
  gram += 1e-12 * np.eye(degree + 1)  # a window of repeated x must not be singular
  rhs = np.stack([(w * u**a) @ y for a in range(degree + 1)], axis=-1)
  return np.linalg.solve(gram, rhs[..., None])[:, 0, 0]


def noise_sigma(values) -> float:
  """Noise std from second differences (white noise: variance 6σ²).

  Second differences cancel a locally linear trend; what curvature is left, and outliers
  (the root mean square, not a robust median), only raise the estimate. So does the factor
  1 + 1/sqrt(m) for m differences: a few points often under-estimate the noise, and an
  under-estimate is what would make the detector fire on noise.
  """
  if len(values) < 3:
    return 0.0
  d2 = np.diff(np.asarray(values, dtype=np.float64), 2)
  return float(np.sqrt(np.mean(d2**2)) / _SECOND_DIFF_SCALE * (1 + 1 / math.sqrt(len(d2))))
