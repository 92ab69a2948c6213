"""Checksums of a train state's arrays that do not depend on how they are sharded, saved with
each checkpoint and checked when it is read back. A flipped byte in a stored chunk that still
decompresses is read back by Orbax without complaint; this is what notices it.

Each array's checksum is Σ wordᵢ·(2i + 1) mod 2³², over its elements' bits as uint32 words in
row-major order i. Integer sums are exact in any order, so every mesh (and one CPU) gets the same
number; the odd weights make any single flipped bit change it.
"""

import jax
import jax.numpy as jnp
from jax import lax

_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _words(x):
  """The array's bits as uint32, one word per element (two for 64-bit types)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if x.dtype.itemsize == 8:
    return lax.bitcast_convert_type(x, jnp.uint32)
  return lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize]).astype(jnp.uint32)


def _checksum(x):
  words = _words(x)
  index = jnp.arange(words.size, dtype=jnp.uint32).reshape(words.shape)
  return jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)


def path_name(path) -> str:
  """'ema_params/dit/block_0/kernel': a leaf's path, the same for a TrainState and for the
  nested dicts a partial restore returns."""
  return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


_checksums = jax.jit(lambda tree: jax.tree.map(_checksum, tree))


def checksums(tree, prefix: str = "") -> dict:
  """{path_name: checksum} of every array in `tree` (on any mesh; every process calls it)."""
  sums = jax.device_get(_checksums(tree))
  return {prefix + path_name(p): int(s) for p, s in jax.tree_util.tree_leaves_with_path(sums)}


def mismatches(tree, saved: dict, prefix: str = "") -> list:
  """The paths of `tree`'s arrays whose checksum differs from `saved`'s (those `saved` has)."""
  return sorted(k for k, v in checksums(tree, prefix).items() if k in saved and saved[k] != v)
