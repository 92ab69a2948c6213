"""What kill_points and fault_points share: a named point of the run, counted each time this
process reaches it, when an environment variable of the form "<point>@<when>" names it."""

import collections
import os

_reached = collections.Counter()


def reached_named(env: str, points: tuple, point: str):
  """(how often this process has now reached `point`, the <when> part), or None when `env` is
  unset or names another point: then a call is one dictionary lookup."""
  assert point in points, point
  spec = os.environ.get(env)
  if not spec:
    return None
  name, _, when = spec.partition("@")
  if name != point:
    return None
  _reached[env, point] += 1
  return _reached[env, point], when
