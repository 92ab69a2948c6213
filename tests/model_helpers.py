"""Small models with every parameter non-trivial, for tests that compare two computations.

A fresh DiT has a zero-initialised output layer (it predicts zero velocity), which would make
any two computations agree; perturbing every leaf makes a difference visible.
"""

import flax.linen as nn
import jax

from linearsr_jax.models.dit import DiTConfig, init_params


def perturbed(params, seed=0, scale=0.05):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(
      tree, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def random_dit_params(cfg: DiTConfig, seed=0):
  return perturbed(nn.unbox(init_params(cfg, jax.random.PRNGKey(seed))), seed + 1)


def tiny_f32_dcae(latent_channels: int, widths=(4, 8, 8, 16, 32, 32)) -> dict:
  """diffusers AutoencoderDC arguments of the f32c32 layout (6 levels, 32× down, attention in
  the last two) at a few thousandths of its width."""
  levels = ["ResBlock"] * 4 + ["EfficientViTBlock"] * 2
  return dict(latent_channels=latent_channels, attention_head_dim=8, encoder_block_types=levels,
              decoder_block_types=levels, encoder_block_out_channels=list(widths),
              decoder_block_out_channels=list(widths), encoder_layers_per_block=[1] * 6,
              decoder_layers_per_block=[1] * 6, encoder_qkv_multiscales=[[]] * 4 + [[5]] * 2,
              decoder_qkv_multiscales=[[]] * 4 + [[5]] * 2, downsample_block_type="Conv",
              upsample_block_type="interpolate", scaling_factor=0.41407)


def sharded_init(init_fn, mesh, rules=None):
  """(params, shardings): `init_fn()`'s boxed tree created already sharded by the logical rules
  (the layout `linearsr train` gives a model's params)."""
  from linearsr_jax import sharding
  rules = list(rules or sharding.DEFAULT_RULES)
  shardings = sharding.tree_shardings(jax.eval_shape(init_fn), mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    params = jax.jit(lambda: nn.unbox(init_fn()), out_shardings=shardings)()
  return params, shardings
