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
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                   for x, k in zip(leaves, keys)])


def random_dit_params(cfg: DiTConfig, seed=0):
  return perturbed(nn.unbox(init_params(cfg, jax.random.PRNGKey(seed))), seed + 1)
