"""Small models with every parameter non-trivial, for tests that compare two computations.

A fresh DiT has a zero-initialised output layer (it predicts zero velocity), which would make
any two computations agree; perturbing every leaf makes a difference visible.
"""

import flax.linen as nn
import jax
import numpy as np

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


def random_trained(scale=0.0, seed=0, num_experts=1, dtype="float32", **diffusion):
  """The tool tests' tiny model (trained_run.tiny_run_config) as `Trained` with random params
  drawn on the host (compiling the model's init takes 10 s and more on a busy CPU): kernels
  N(0, 1/fan_in), norm weights 1 + N(0, 0.05²), the rest N(0, 0.05²), and the output layer's
  kernel N(0, scale²) and bias zero. With scale 0 the model predicts zero velocity, so the
  LR-anchored sampler returns its start, the bicubic upsampled LR image. `diffusion` replaces
  config.diffusion fields (lr_source_noise=0: the start is exactly the bicubic image)."""
  from linearsr_jax.inference.trained import Trained
  from linearsr_jax.models.build import build_model
  from linearsr_jax.models.sr_model import sr_example_inputs
  from trained_run import tiny_run_config

  config = tiny_run_config()
  config.model.dtype = dtype
  config.diffusion.update(diffusion)
  model, latent_space = build_model(config)
  inputs = sr_example_inputs(model.dit, model.tags, 1, (4, 4))
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    names = [getattr(k, "key", "") for k in path]
    shape = (num_experts, *leaf.shape)
    if "proj_out" in names:
      return (scale * rng.standard_normal(shape) * (names[-1] == "kernel")).astype(np.float32)
    std = np.prod(leaf.shape[:-1])**-0.5 if len(leaf.shape) > 1 else 0.05
    return (float(names[-1] == "weight") + std * rng.standard_normal(shape)).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(draw, shapes)
  return Trained(config, "random", 0, model, params, latent_space, config.diffusion)
