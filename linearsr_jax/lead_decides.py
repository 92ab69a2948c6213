"""Decisions a multi-host run makes once: process 0's value, on every process.

Each host reading storage for itself can see something else (a read error on one host, a
generation of the metrics log written meanwhile); a choice that changes the run (set a
checkpoint aside, which metrics ESGF judges) must then not differ between hosts.
"""

import json

import jax
import numpy as np
from jax.experimental import multihost_utils


def broadcast(value):
  """Process 0's `value` (anything JSON can hold) on every process; `value` itself in a
  single-process run. Every process must call it, in the same order."""
  if jax.process_count() == 1:
    return value
  data = json.dumps(value).encode() if jax.process_index() == 0 else b""
  size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
  data = np.frombuffer(data, np.uint8) if data else np.zeros(size, np.uint8)
  return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(data))))


def processes_where(flag: bool) -> list:
  """The processes whose `flag` is true, on every process (each must call it)."""
  if jax.process_count() == 1:
    return [0] if flag else []
  flags = np.asarray(multihost_utils.process_allgather(np.array([flag], np.int32)))
  return [int(p) for p in np.flatnonzero(flags.ravel())]
