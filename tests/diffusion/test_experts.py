"""Expert mixture: SNR-bisected boundaries, routing by t, stacked params, training by vmap."""

import functools
from fractions import Fraction

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linearsr_jax import sharding
from linearsr_jax.diffusion import experts, flow, samplers
from linearsr_jax.errors import UserError
from linearsr_jax.models.dit import DiT, DiTConfig, init_params

SMALL_DIT = DiTConfig(depth=1, hidden=32, heads=1, cross_heads=1, cross_head_dim=16,
                      caption_channels=8, latent_channels=4, lr_channels=4, lr_stem_convs=0,
                      lr_stem_width=8)


def _t_of_lambda(lam):
  """Hand inverse of λ(t) = 2·log((1−t)/t)."""
  return 1.0 / (1.0 + np.exp(lam / 2.0))


def test_snr_bisection_reproduces_paper_boundaries():
  np.testing.assert_allclose(experts.snr_boundaries(4, -7.04, 8.89, 0.875), [0.223, 0.875, 0.939],
                             atol=1e-3)
  cfg = flow.default_config()
  np.testing.assert_allclose(experts.boundaries_from_config(cfg.experts, 4), [0.223, 0.875, 0.939],
                             atol=1e-3)


def test_other_lambda_range_moves_boundaries_by_formula():
  # Anchor t=0.5 is λ=0; the halves [0, 6] and [−6, 0] are bisected at λ = 3 and λ = −3.
  np.testing.assert_allclose(experts.snr_boundaries(4, -6.0, 6.0, 0.5),
                             [_t_of_lambda(3.0), 0.5, _t_of_lambda(-3.0)], rtol=1e-12)
  np.testing.assert_allclose([_t_of_lambda(3.0), _t_of_lambda(-3.0)], [0.182426, 0.817574],
                             atol=1e-6)
  # Raising λ_max only moves the low-noise boundary: midpoint of [λ(0.875), λ_max].
  lam_anchor = 2 * np.log(0.125 / 0.875)
  moved = experts.snr_boundaries(4, -7.04, 12.0, 0.875)
  np.testing.assert_allclose(moved[0], _t_of_lambda((lam_anchor + 12.0) / 2), rtol=1e-12)
  np.testing.assert_allclose(moved[1:], experts.snr_boundaries(4, -7.04, 8.89, 0.875)[1:])
  # 8 experts: one more level, each quarter bisected at its λ midpoint.
  quarters = [8.89, (8.89 + lam_anchor) / 2, lam_anchor, (lam_anchor - 7.04) / 2, -7.04]
  eighths = [(a + b) / 2 for a, b in zip(quarters[:-1], quarters[1:])]
  expected = sorted(_t_of_lambda(np.array(quarters[1:-1] + eighths)))
  np.testing.assert_allclose(experts.snr_boundaries(8, -7.04, 8.89, 0.875), expected, rtol=1e-12)
  assert experts.snr_boundaries(2, -7.04, 8.89, 0.875) == (0.875,)
  assert experts.snr_boundaries(1, -7.04, 8.89, 0.875) == ()


def test_uniform_split_and_bad_configs():
  assert experts.uniform_boundaries(4) == (0.25, 0.5, 0.75)
  with pytest.raises(UserError, match="power of two"):
    experts.snr_boundaries(3, -7.04, 8.89, 0.875)
  with pytest.raises(UserError, match="lambda_min"):
    experts.snr_boundaries(4, -1.0, 8.89, 0.875)


@pytest.mark.parametrize("boundaries", [(0.22277892, 0.875, 0.9389435), (0.25, 0.5, 0.75), (0.5,),
                                        ()])
def test_every_t_maps_to_exactly_one_expert(boundaries):
  t = np.concatenate([
      np.linspace(0, 1, 10_001),
      np.asarray(boundaries),
      np.nextafter(np.asarray(boundaries, np.float32), 0)
  ]).astype(np.float32)
  lo, hi = experts.expert_intervals(boundaries)
  inside = (t[:, None] >= lo) & ((t[:, None] < hi) | ((t[:, None] == 1) & (hi == 1)))
  assert (inside.sum(1) == 1).all()
  np.testing.assert_array_equal(experts.expert_index(t, boundaries), inside.argmax(1))


@pytest.mark.slow
@pytest.mark.parametrize("shift", [1, 2, 3, 4])
def test_sampler_steps_on_the_anchor_run_the_expert_above_it(shift):
  """In exact arithmetic a schedule step can land on the anchor (20 steps at shift 3: σ = 7/8);
  in float64 it comes out as 0.8749999…, which a float64 comparison would hand to the expert
  below. Exact rationals say which expert each step belongs to."""
  boundaries = experts.snr_boundaries(4, -7.04, 8.89, 0.875)
  exact_boundaries = [Fraction(b) for b in boundaries]  # the anchor is exactly 7/8
  on_anchor = 0
  for steps in range(1, 61):
    schedule = samplers.sigma_schedule(steps, shift)[:-1]
    routed = experts.expert_index(schedule, boundaries, xp=np)
    np.testing.assert_array_equal(routed, np.asarray(experts.expert_index(schedule, boundaries)))
    for k, expert in enumerate(routed):
      s = 1 - Fraction(k, steps)
      sigma = shift * s / (1 + (shift - 1) * s)
      if any(abs(sigma - b) < Fraction(1, 10**6) and b != Fraction(7, 8) for b in exact_boundaries):
        continue  # a float boundary's own rounding decides; nothing exact to compare with
      on_anchor += sigma == Fraction(7, 8)
      assert expert == sum(sigma >= b for b in exact_boundaries), (steps, k, float(sigma))
  assert on_anchor >= 3  # the cases that matter were seen (20 steps at shift 3 among them)


def test_stacking_boxed_params_prepends_expert_axis():
  boxed = jax.eval_shape(lambda: experts.init_experts(
      init_params(SMALL_DIT, jax.random.PRNGKey(0), latent_hw=(4, 4)), 4))
  single = jax.eval_shape(lambda: init_params(SMALL_DIT, jax.random.PRNGKey(0), latent_hw=(4, 4)))
  for stacked_box, box in zip(jax.tree.leaves(boxed, is_leaf=experts._is_box),
                              jax.tree.leaves(single, is_leaf=experts._is_box)):
    assert stacked_box.names == ("expert",) + tuple(box.names)
    chex.assert_shape(stacked_box.value, (4,) + box.value.shape)
  plain = {"a": jnp.arange(6.0).reshape(2, 3), "b": {"c": jnp.ones(4)}}
  stacked = experts.init_experts(plain, 4)
  assert experts.num_experts_of(stacked) == 4
  np.testing.assert_array_equal(stacked["a"][3], plain["a"])
  picked = experts.select_expert(experts.stack_experts([plain,
                                                        jax.tree.map(jnp.negative, plain)]),
                                 jnp.int32(1))
  chex.assert_trees_all_equal(picked, jax.tree.map(jnp.negative, plain))


def _constant_velocity_apply(params, x_t, t, lr, cond, cond_mask):
  """A model whose velocity is its model time t everywhere."""
  return jnp.broadcast_to(t.reshape(-1, 1, 1, 1), x_t.shape) + 0 * params["w"]


def test_training_draws_each_share_inside_its_experts_interval():
  cfg = flow.default_config()
  cfg.update(source="lr", lr_source_noise=0.0, train_shift=3.0)
  lo, hi = experts.expert_intervals(experts.boundaries_from_config(cfg.experts, 4))
  params = experts.init_experts({"w": jnp.zeros(())}, 4)
  zeros = jnp.zeros((4, 2, 2, 1))  # x0 = x1 = 0: the loss of one sample is (σ·scale)²
  loss_fn = jax.jit(lambda key: experts.mixture_loss(_constant_velocity_apply, params, zeros, (
      None, None, None), key, cfg, lr_latent=zeros)[1])
  sigma = np.stack(
      [np.sqrt(np.asarray(loss_fn(jax.random.PRNGKey(i)), np.float64)) / 1000 for i in range(40)])
  assert ((sigma >= lo - 1e-6) & (sigma <= hi + 1e-6)).all()
  assert (sigma.max(0) - sigma.min(0) > 0.3 * (hi - lo)).all()  # spread over each interval


def _dit_batch(batch, key):
  k = jax.random.split(key, 4)
  return (jax.random.normal(k[0], (batch, 4, 4, 4)),
          (jax.random.uniform(k[1], (batch, 4, 4, 3), minval=-1, maxval=1),
           jax.random.normal(k[2], (batch, 3, 8)), jnp.ones((batch, 3), bool)))


@functools.lru_cache
def distinct_dit_experts(num):
  """(boxed abstract tree, params) of `num` DiT experts with different random weights.

  Shapes come from eval_shape and values from NumPy: compiling the DiT's init costs more than
  the tests that use it.
  """
  init = lambda: init_params(SMALL_DIT, jax.random.PRNGKey(0), latent_hw=(4, 4))
  boxed = jax.eval_shape(lambda: experts.init_experts(init(), num))
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda leaf: jnp.asarray(0.1 * rng.standard_normal(leaf.shape), jnp.float32), nn.unbox(boxed))
  return boxed, params


@pytest.mark.slow
def test_sharded_training_routes_each_samples_gradient_to_its_expert_only():
  """Expert axis sharded 4 ways (data 2): each sample's gradient reaches only its own expert,
  and the sharded loss and gradients equal the unsharded ones."""
  cfg = flow.default_config()
  boxed, params = distinct_dit_experts(4)
  apply_fn = experts.model_apply(DiT(SMALL_DIT))
  x0, context = _dit_batch(8, jax.random.PRNGKey(11))
  key = jax.random.PRNGKey(3)
  value_and_grad = jax.value_and_grad(lambda p, x0, context, weights: experts.mixture_loss(
      apply_fn, p, x0, context, key, cfg, weights=weights)[0])
  ones = jnp.ones(8)
  expected_loss, expected_grads = jax.jit(value_and_grad)(params, x0, context, ones)

  mesh = sharding.make_mesh({"expert": 4, "data": 2})
  param_shardings = sharding.tree_shardings(boxed, mesh)
  batch_sharding = sharding.batch_sharding(mesh)  # training's: expert-major
  assert batch_sharding.spec[0][:2] == ("expert", "data")
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(sharding.DEFAULT_RULES)):
    sharded_params = jax.device_put(params, param_shardings)
    leaf = jax.tree.leaves(sharded_params)[0]
    assert leaf.sharding.spec[0] == "expert" and len(leaf.addressable_shards) == 8
    x0_s, context_s = jax.device_put((x0, context), batch_sharding)
    step = jax.jit(value_and_grad, out_shardings=(None, param_shardings))
    loss, grads = step(sharded_params, x0_s, context_s, ones)
    one_hot_grads = {
        sample: step(sharded_params, x0_s, context_s,
                     jax.device_put(jax.nn.one_hot(sample, 8), batch_sharding))
                [1] for sample in (0, 3, 6)
    }
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  # Summation order differs across shards: compare against each leaf's scale.
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * float(jnp.abs(b).max()) +
                                              1e-8), grads, expected_grads)
  for sample, g in one_hot_grads.items():
    owner = sample // 2  # 8 samples over 4 experts
    for e in range(4):
      largest = max(float(jnp.abs(leaf[e]).max()) for leaf in jax.tree.leaves(g))
      if e == owner:
        assert largest > 0
      else:
        assert largest == 0.0, (sample, e)


def test_batch_must_split_evenly():
  cfg = flow.default_config()
  params = experts.init_experts({"w": jnp.zeros(())}, 4)
  with pytest.raises(UserError, match="divisible"):
    experts.mixture_loss(_constant_velocity_apply, params, jnp.zeros((6, 2, 2, 1)),
                         (None, None, None), jax.random.PRNGKey(0), cfg)
