"""Clipping each expert's gradient by its own norm, against a float64 NumPy formula."""

import jax.numpy as jnp
import numpy as np
import optax

from linearsr_jax import optimizer


def _clipped_f64(grads: dict, max_norm: float) -> dict:
  """Expert e's leaves times min(1, max_norm / sqrt(sum over its leaves of g²))."""
  experts = next(iter(grads.values())).shape[0]
  out = {k: np.asarray(v, np.float64).copy() for k, v in grads.items()}
  for e in range(experts):
    norm = np.sqrt(sum((np.asarray(v, np.float64)[e]**2).sum() for v in grads.values()))
    for k in out:
      out[k][e] *= min(1.0, max_norm / norm)
  return out


def test_each_expert_is_clipped_by_its_own_norm():
  rng = np.random.default_rng(0)
  grads = {
      "kernel": rng.standard_normal((4, 8, 16)).astype(np.float32), "bias": rng.standard_normal(
          (4, 16)).astype(np.float32)
  }
  grads["kernel"][1] *= 100.0  # a spike in expert 1 only
  grads["kernel"][3] *= 1e-3  # expert 3 is under the limit
  grads["bias"][3] *= 1e-3
  clip = optimizer.clip_by_expert_norm(1.0)
  out, _ = clip.update({k: jnp.asarray(v) for k, v in grads.items()}, clip.init(grads))
  want = _clipped_f64(grads, 1.0)
  for k in grads:
    np.testing.assert_allclose(np.asarray(out[k]), want[k], rtol=1e-5, atol=1e-8)
  np.testing.assert_array_equal(np.asarray(out["kernel"][3]), grads["kernel"][3])  # untouched
  # One norm over all experts would have shrunk expert 3's step with expert 1's spike.
  joint, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
  assert np.abs(np.asarray(joint["kernel"][3]) - grads["kernel"][3]).max() > 1e-6
