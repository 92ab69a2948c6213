"""bench/chaos.py's storage faults: LINEARSR_FAULT_AT fails the named call the times it says,
with an error storage_errors takes for the storage's (retried), not for damage."""

import collections

import pytest

from linearsr_jax import storage_errors
from linearsr_jax.run import env_points, fault_points


def test_the_nth_call_and_the_k_after_it_fail_as_a_storage_error(monkeypatch):
  monkeypatch.setattr(env_points, "_reached", collections.Counter())
  monkeypatch.setenv(fault_points.ENV, "checkpoint_read@2x2")
  failed = []
  for call in range(1, 6):
    fault_points.reached("checkpoint_save")  # another point: never fails
    try:
      fault_points.reached("checkpoint_read")
    except ValueError as e:
      assert storage_errors.storage_error(e) and storage_errors.damage(e) is None
      failed.append(call)
  assert failed == [2, 3]


def test_unset_nothing_fails(monkeypatch):
  monkeypatch.delenv(fault_points.ENV, raising=False)
  for _ in range(3):
    fault_points.reached("checkpoint_read")
  with pytest.raises(AssertionError):
    fault_points.reached("no_such_point")
