"""The model options that cut a train step's bytes (`linearsr compile`'s breakdown, docs/results.md)
against the float32 model they replace: loss and gradients over a few steps of a SANA-width
model (SANA-600M's head size and MLP ratio at a quarter of its width, one block, an 8×8 grid)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linearsr_jax.models.dit import DiT, DiTConfig
from model_helpers import random_dit_params

SANA_WIDTH = DiTConfig(depth=1, hidden=288, heads=9, cross_heads=4, cross_head_dim=72,
                       caption_channels=64, latent_channels=32, lr_channels=16, lr_stem_convs=0,
                       lr_stem_width=32, scan_layers=False)
STEPS, LEARNING_RATE = 3, 0.05


def _trajectory(cfg: DiTConfig):
  """(losses, gradients) of STEPS plain gradient steps on a velocity-style MSE, from the same
  params and data."""
  params = random_dit_params(SANA_WIDTH)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 8, 8, cfg.latent_channels)).astype(np.float32)
  lr = rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
  cond = rng.standard_normal((4, 6, cfg.caption_channels)).astype(np.float32)
  target = rng.standard_normal(x.shape).astype(np.float32)
  args = (x, jnp.array([50.0, 300.0, 600.0, 900.0]), lr, cond, jnp.ones((4, 6), bool))
  loss_fn = lambda p: jnp.mean((DiT(cfg).apply({"params": p}, *args) - target)**2)
  step = jax.jit(jax.value_and_grad(loss_fn))
  losses, grads = [], []
  for _ in range(STEPS):
    loss, grad = step(params)
    losses.append(float(loss))
    grads.append(grad)
    params = jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grad)
  return np.array(losses), grads


def _relative_gradient_error(grads, reference) -> float:
  """The largest, over steps and parameters, of |g − g_ref| / |g_ref| (Frobenius), a parameter's
  |g_ref| floored at 1e-4 of the whole gradient's: some are zero but for rounding (the
  cross-attention's key bias, to which softmax is blind)."""
  worst = 0.0
  for g, r in zip(grads, reference):
    floor = 1e-4 * float(jnp.sqrt(sum(jnp.sum(b**2) for b in jax.tree.leaves(r))))
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(r)):
      worst = max(worst, float(jnp.linalg.norm(a - b)) / max(float(jnp.linalg.norm(b)), floor))
  return worst


@pytest.fixture(scope="module")
def float32():
  return _trajectory(SANA_WIDTH)


@pytest.mark.slow
def test_grouped_depthwise_conv_is_the_shifts_sum(float32):
  """The same float32 sum computed another way: equal up to float32 rounding."""
  losses, grads = _trajectory(dataclasses.replace(SANA_WIDTH, depthwise="grouped"))
  np.testing.assert_allclose(losses, float32[0], rtol=1e-5)
  assert _relative_gradient_error(grads, float32[1]) < 1e-4
