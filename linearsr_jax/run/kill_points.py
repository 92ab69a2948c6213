"""Named moments of a training run at which a test or `bench/chaos.py` SIGKILLs it.

LINEARSR_KILL_AT="<point>[@<n>]" kills this process the n-th time (default: the first) it
reaches <point>, as a preemption would: whatever is half-done stays half-done. Unset, as it is
outside those tests, `reached` is one dictionary lookup.
"""

import os
import signal

from linearsr_jax.run import env_points

ENV = "LINEARSR_KILL_AT"
POINTS = (
    "checkpoint_write",  # an asynchronous checkpoint save is in flight
    "metrics_append",  # half of a metrics.jsonl line is written
    "rolled_back",  # the divergence guard's rollback is checkpointed, training not gone on
    "knee_restored",  # a stage's knee checkpoint is read, nothing of its ending written
    "knee_plot",  # the knee plot is drawn, not yet written
    "stage_ended",  # result.json is written; run.json and the next stage.json are not
    "run_json",  # run.json is about to be rewritten with the stage that just ended
)


def reached(point: str):
  hit = env_points.reached_named(ENV, POINTS, point)
  if hit is not None and hit[0] == int(hit[1] or 1):
    os.kill(os.getpid(), signal.SIGKILL)
