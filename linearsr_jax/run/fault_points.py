"""Named storage calls at which `bench/chaos.py` makes a checkpoint read or write fail as GCS
does for a minute (a 503, a dropped connection), to show that the run survives it.

LINEARSR_FAULT_AT="<point>@<n>[x<k>]" makes the n-th time this process reaches <point>, and the
k - 1 times after it (k defaults to 1), raise TensorStore's error for a storage that did not
answer. A retried read reaches its point again, so "checkpoint_read@1x2" fails a restore's first
two tries. Unset, as it is outside the bench, `reached` is one dictionary lookup.
"""

import os

from linearsr_jax.run import env_points

ENV = "LINEARSR_FAULT_AT"
POINTS = (
    "checkpoint_read",  # a checkpoint's state and metrics are about to be read
    "checkpoint_save",  # a checkpoint is about to be written
)


def reached(point: str):
  hit = env_points.reached_named(ENV, POINTS, point)
  if hit is None:
    return
  count, when = hit
  first, _, times = when.partition("x")
  if int(first) <= count < int(first) + int(times or 1):
    raise ValueError(f"UNAVAILABLE: injected by {ENV}={os.environ[ENV]} (try {count})")
