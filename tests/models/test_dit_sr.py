"""The SR model around the SANA backbone: zero-initialised LR channels, bfloat16, sharding."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from linearsr_jax.configs import tiny
from linearsr_jax import sharding
from linearsr_jax.interop import diffusers_sana
from linearsr_jax.models.dit import DiT, DiTConfig, example_inputs
from model_helpers import perturbed, random_dit_params, sharded_init
from sana_reference import random_sana, reference_inputs, torch_forward

T2I = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, num_cross_attention_heads=2,
           cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=24, in_channels=8,
           out_channels=8, patch_size=2)


def tiny_cfg(**changes) -> DiTConfig:
  return dataclasses.replace(DiTConfig.from_dict(tiny.get_config().model.to_dict()), **changes)


@pytest.mark.slow
def test_zero_initialised_lr_channels_reproduce_text_to_image_output(tmp_path):
  reference = random_sana(seed=5, **T2I)
  reference.save_pretrained(tmp_path / "t2i")
  x, t, cond, mask = reference_inputs(0, 2, (12, 20), 8, 6, 24)
  expected = torch_forward(reference, x, t, cond, mask)

  cfg, params = diffusers_sana.import_transformer(tmp_path / "t2i", lr_channels=16, lr_stem_convs=2,
                                                  lr_stem_width=8)
  assert cfg.lr_channels == 16 and "lr_stem" in params
  rng = np.random.default_rng(1)
  outs = []
  for _ in range(2):
    lr = rng.uniform(-1, 1, (2, 48, 80, 3)).astype(np.float32)
    outs.append(np.asarray(DiT(cfg).apply({"params": params}, x, t, lr, cond, mask)))
  np.testing.assert_array_equal(outs[0], outs[1])  # the LR input has exactly no effect
  assert np.max(np.abs(outs[0] - expected)) <= 1e-5 * np.max(np.abs(expected))


@pytest.mark.slow
def test_lr_channels_change_the_output_once_trained():
  """The converse: a model whose LR path has non-zero weights does see the LR image."""
  cfg = tiny_cfg(depth=1)
  params = random_dit_params(cfg)
  x, t, lr, cond, mask = example_inputs(cfg, 1, (8, 8))
  a = DiT(cfg).apply({"params": params}, x, t, lr, cond, mask)
  b = DiT(cfg).apply({"params": params}, x, t, lr + 0.5, cond, mask)
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3


@pytest.mark.slow
def test_bfloat16_compute_tracks_float32_without_nan():
  cfg32 = tiny_cfg()
  params = random_dit_params(cfg32)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 64, 64, cfg32.latent_channels)).astype(np.float32)
  lr = rng.uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
  cond = rng.standard_normal((1, 8, cfg32.caption_channels)).astype(np.float32)
  args = (x, jnp.array([600.0]), lr, cond, jnp.ones((1, 8), bool))
  out32 = DiT(cfg32).apply({"params": params}, *args)
  out16 = DiT(tiny_cfg(dtype="bfloat16")).apply({"params": params}, *args)
  assert out16.dtype == jnp.float32 and not bool(jnp.any(jnp.isnan(out16)))
  rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  assert rel <= 1e-2, rel


@pytest.mark.slow
def test_sharded_params_follow_logical_rules_and_forward_matches_single_device():
  cfg = tiny_cfg(scan_layers=True)  # the stacked layout of the large configs
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  inputs = example_inputs(cfg, 4, (8, 8))
  params, shardings = sharded_init(lambda: DiT(cfg).init(jax.random.PRNGKey(0), *inputs)["params"],
                                   mesh)
  block = params["blocks"]["block"]
  expect = {("attn1", "to_q", "kernel"): P(None, "fsdp", "tensor"),
            ("attn1", "to_out", "kernel"): P(None, "tensor", "fsdp"),
            ("ff", "conv_inverted", "kernel"): P(None, "fsdp", "tensor"),
            ("ff", "conv_depth_kernel"): P(None, None, None, "tensor"),
            ("ff", "conv_point", "kernel"): P(None, "tensor", "fsdp"),
            ("scale_shift_table",): P(None, None, "fsdp")}
  for path, spec in expect.items():
    leaf = block
    for key in path:
      leaf = leaf[key]
    assert leaf.sharding.spec == spec, path
  assert params["patch_embed"]["kernel"].sharding.spec == P(None, "fsdp")
  assert params["time_adaln"]["kernel"].sharding.spec == P("fsdp", "tensor")

  rng = np.random.default_rng(0)
  x = rng.standard_normal(inputs[0].shape).astype(np.float32)
  args = (x, jnp.array([10.0, 200.0, 500.0, 900.0]), rng.uniform(-1, 1, inputs[2].shape),
          rng.standard_normal(inputs[3].shape).astype(np.float32), inputs[4])
  params = jax.device_put(perturbed(jax.device_get(params)), shardings)
  single = DiT(cfg).apply({"params": jax.device_get(params)}, *args)
  batch_sharding = jax.NamedSharding(mesh, P(("data", "fsdp")))
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(sharding.DEFAULT_RULES)):
    fwd = jax.jit(lambda p, *a: DiT(cfg).apply({"params": p}, *a),
                  in_shardings=(shardings,) + (batch_sharding,) * 5)
    sharded = fwd(params, *args)
  assert sharded.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=0,
                             atol=1e-5 * float(jnp.max(jnp.abs(single))))
