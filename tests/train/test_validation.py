"""The per-expert validation flow loss: fixed (x0, source, σ) triples on the eval pairs, one
curve per expert, each moved only by its own expert's params."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from linearsr_jax.configs import tiny
from linearsr_jax.diffusion import experts
from linearsr_jax.models.build import build_model
from linearsr_jax.models.sr_model import sr_example_inputs
from linearsr_jax.run.metric_keys import flow_loss_key
from linearsr_jax.train.validation import ExpertFlowLosses
from model_helpers import perturbed

NUM_EXPERTS = 4


def _setup():
  config = tiny.get_config()
  config.model.update(depth=1, hidden=32, heads=2, cross_heads=2, cross_head_dim=16)
  model, latent_space = build_model(config)
  one = perturbed(
      nn.unbox(
          model.init(jax.random.PRNGKey(0), *sr_example_inputs(model.dit, model.tags, 1,
                                                               (8, 8)))["params"]))
  rng = np.random.default_rng(0)
  batches = [{
      "hr": rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32),
      "lr": rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32),
      "cond": rng.integers(0, 1000,
                           (2, config.tags.max_tokens)).astype(np.int32), "cond_mask": np.ones(
                               (2, config.tags.max_tokens), bool)
  } for _ in range(2)]
  losses = ExpertFlowLosses(model, latent_space, {}, config.diffusion, batches,
                            num_experts=NUM_EXPERTS, scale=4, seed=0)
  return config, model, one, losses


@pytest.mark.slow
def test_a_corrupted_expert_moves_its_own_curve_and_no_other():
  config, model, one, losses = _setup()
  branched = experts.init_experts(one, NUM_EXPERTS)  # a branch: four identical experts
  before = losses(branched)
  assert set(before) == {flow_loss_key(e) for e in range(NUM_EXPERTS)}
  corrupted = jax.tree.map(
      lambda x: x.at[2].add(0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape[1:], x.dtype)),
      branched)
  after = losses(corrupted)
  for e in range(NUM_EXPERTS):
    key = flow_loss_key(e)
    if e == 2:
      assert after[key] > 1.5 * before[key], (before, after)
    else:
      assert after[key] == before[key], key
  assert losses(corrupted) == after  # fixed triples: the same params give the same curve


@pytest.mark.slow
def test_each_experts_triples_lie_in_its_interval_and_the_loss_matches_a_float64_formula():
  config, model, one, losses = _setup()
  branched = experts.init_experts(one, NUM_EXPERTS)
  lo, hi = experts.expert_intervals(
      experts.boundaries_from_config(config.diffusion.experts, NUM_EXPERTS))
  expected = np.zeros(NUM_EXPERTS)
  for x0, x1, sigma, lr, cond, mask in losses.fixed:
    sigma = np.asarray(sigma)
    assert ((sigma >= lo[:, None]) & (sigma <= hi[:, None])).all()
    for e in range(NUM_EXPERTS):
      s = sigma[e][:, None, None, None].astype(np.float64)
      x_t = (1 - s) * np.asarray(x0, np.float64) + s * np.asarray(x1[e], np.float64)
      v = model.apply({"params": one}, np.float32(x_t),
                      np.float32(sigma[e] * config.diffusion.timestep_scale), lr, cond, mask)
      target = np.asarray(x1[e], np.float64) - np.asarray(x0, np.float64)
      expected[e] += ((np.asarray(v, np.float64) - target)**2).mean(axis=(1, 2, 3)).sum()
  expected /= sum(f[0].shape[0] for f in losses.fixed)
  got = losses(branched)
  np.testing.assert_allclose([got[flow_loss_key(e)] for e in range(NUM_EXPERTS)], expected,
                             rtol=1e-5)
