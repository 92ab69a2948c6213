"""Named moments of a training run at which a test or `bench/chaos.py` SIGKILLs it.

LINEARSR_KILL_AT="<point>[@<n>]" kills this process the n-th time (default: the first) it
reaches <point>, as a preemption would: whatever is half-done stays half-done. Unset, as it is
outside those tests, `reached` is one dictionary lookup.
"""

import collections
import os
import signal

ENV = "LINEARSR_KILL_AT"
POINTS = (
    "checkpoint_write",   # an asynchronous checkpoint save is in flight
    "metrics_append",     # half of a metrics.jsonl line is written
    "rolled_back",        # the divergence guard's rollback is checkpointed, training not gone on
    "knee_restored",      # a stage's knee checkpoint is read, nothing of its ending written
    "knee_plot",          # the knee plot is drawn, not yet written
    "stage_ended",        # result.json is written; run.json and the next stage.json are not
    "run_json",           # run.json is about to be rewritten with the stage that just ended
)
_reached = collections.Counter()


def reached(point: str):
  assert point in POINTS, point
  spec = os.environ.get(ENV)
  if not spec:
    return
  name, _, nth = spec.partition("@")
  if name == point:
    _reached[point] += 1
    if _reached[point] == int(nth or 1):
      os.kill(os.getpid(), signal.SIGKILL)
