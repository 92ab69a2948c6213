"""The evaluation history: (step, {metric: value}) records, read from metrics.jsonl or
handed over by the loop, and the curves in them."""

import math
from typing import Iterable, Mapping

import numpy as np

from linearsr_jax import storage
from linearsr_jax.errors import UserError
from linearsr_jax.run.run_dir import read_jsonl


def read_metrics_jsonl(path) -> tuple:
  """(records, ignored): records are (step, {key: float}) in file order.

  Lines that are not JSON objects with an integer "step" (a partial last line after a kill)
  are counted in `ignored`, not fatal; non-numeric values are dropped.
  """
  path = storage.path(path)
  if not path.exists():
    raise UserError(f"metrics file {path} does not exist")
  rows, unreadable = read_jsonl(path)
  records = [(int(r["step"]), numeric_values(r)) for r in rows if _is_step(r.get("step"))]
  return records, unreadable + len(rows) - len(records)


def judged(step: int, first_stage: bool) -> bool:
  """Whether ESGF judges the evaluation at `step`: all but the first stage's step 0, the model
  before any training (fresh, or text-to-image weights that ignore the LR image). Its score
  lies far below the curve: it would inflate the gain that a relative min_delta scales with,
  so a slow but real rise passes for a plateau, and pin Kneedle's knee to the first trained
  evaluation. A later stage's step 0 is the knee it branched from, its true start."""
  return step > 0 or not first_stage


def _is_step(step) -> bool:
  return (not isinstance(step, bool) and isinstance(step, (int, float)) and math.isfinite(step) and
          step == int(step))


def numeric_values(metrics: Mapping) -> dict:
  """The scalar numbers of a metrics dict as floats (Python, NumPy or JAX scalars); the
  step, text, flags and arrays are left out."""
  values = {}
  for key, value in metrics.items():
    if key == "step" or isinstance(value, (bool, str)):
      continue
    try:
      values[key] = float(value)
    except (TypeError, ValueError):
      continue
  return values


def metric_series(records: Iterable, name: str) -> tuple:
  """(steps, values) of one metric: finite values, sorted by step, the last record of a
  repeated step wins (a resumed run logs the steps after its checkpoint again)."""
  latest = {}
  for step, values in records:
    value = values.get(name)
    if value is not None and math.isfinite(value):
      latest[int(step)] = float(value)
  steps = np.array(sorted(latest), dtype=np.int64)
  return steps, np.array([latest[s] for s in steps], dtype=np.float64)


def baseline_key(name, prefix) -> str:
  """'val/psnr_y' -> 'val/bicubic_psnr_y': where the loop logs the bicubic baseline."""
  head, sep, tail = name.rpartition("/")
  return f"{head}{sep}{prefix}{tail}"
