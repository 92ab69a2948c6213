"""Named storage calls at which `bench/chaos.py` makes a checkpoint read or write fail as GCS
does for a minute (a 503, a dropped connection), to show that the run survives it.

LINEARSR_FAULT_AT="<point>@<n>[x<k>]" makes the n-th time this process reaches <point>, and the
k - 1 times after it (k defaults to 1), raise TensorStore's error for a storage that did not
answer. A retried read reaches its point again, so "checkpoint_read@1x2" fails a restore's first
two tries. Unset, as it is outside the bench, `reached` is one dictionary lookup.
"""

import collections
import os

ENV = "LINEARSR_FAULT_AT"
POINTS = (
    "checkpoint_read",   # a checkpoint's state and metrics are about to be read
    "checkpoint_save",   # a checkpoint is about to be written
)
_reached = collections.Counter()


def reached(point: str):
  assert point in POINTS, point
  spec = os.environ.get(ENV)
  if not spec:
    return
  name, _, when = spec.partition("@")
  if name == point:
    _reached[point] += 1
    first, _, times = when.partition("x")
    if int(first) <= _reached[point] < int(first) + int(times or 1):
      raise ValueError(f"UNAVAILABLE: injected by {ENV}={spec} (try {_reached[point]})")
