"""TAG conditioning: short tag lists (or precomputed text-encoder tokens) → condition tokens.

- `tokenize_tags` (pure NumPy, runs in data workers): normalise, dedupe and sort the tags, then
  hash each into a fixed vocabulary with CRC-32 (stable across processes and runs, unlike
  Python's salted `hash`). Returns ids [L] and a mask [L].
- `TagEncoder`: learned embeddings of those ids → tokens [B, L, C] + mask.
- `PrecomputedEncoder`: tokens made offline by any text encoder (e.g. SANA's Gemma-2),
  loaded per image by `load_precomputed` from [L, C] arrays (.npy sidecars, or entries of an
  .npz / .safetensors file), checked for shape and finite values.
- `make_condition`: the data pipeline's per-image callable for the configured encoder.
Both encoders own a learned null condition. It replaces rows with no tokens (empty tags fall
back to it, never crash) and, with probability `dropout_prob` in training, any row, which is
what trains the null condition that classifier-free guidance uses.
Reading tag and array files (sidecars, mappings) lives in linearsr_jax/data/tag_sources.py.
"""

import functools
import re
import warnings
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from linearsr_jax.data.tag_sources import read_array, split_tags
from linearsr_jax.errors import UserError
from linearsr_jax.models.layers import logical

ENCODERS = ("hash", "precomputed")


def default_config() -> ml_collections.ConfigDict:
  """The `tags` config section."""
  return ml_collections.ConfigDict({
      "encoder": "hash",        # 'hash' (TagEncoder) | 'precomputed' (PrecomputedEncoder)
      "vocab_size": 4096,       # hash buckets for 'hash'
      "max_tokens": 16,         # L: tags kept per image / tokens per precomputed array
      "dropout_prob": 0.1,      # training probability of replacing a condition by the null one
  })


def normalize_tags(tags):
  """Lower-case, whitespace-collapsed, de-duplicated, sorted tags.

  `tags` is a comma-separated string or an iterable of them; empty entries are dropped.
  """
  return sorted({re.sub(r"\s+", " ", tag).lower() for tag in split_tags(tags)})


def tag_id(tag, vocab_size):
  """Stable hash bucket of one normalised tag."""
  return zlib.crc32(tag.encode("utf-8")) % vocab_size


def tokenize_tags(tags, vocab_size, max_tokens):
  """(ids int32 [max_tokens], mask bool [max_tokens]) for one image's tags.

  Order- and case-independent. Beyond max_tokens, the alphabetically first tags are kept.
  No tags gives an all-False mask (the encoder then uses the null condition) and a warning.
  """
  names = normalize_tags(tags)[:max_tokens]
  if not names:
    warnings.warn("image has no tags: using the null condition", stacklevel=2)
  ids, mask = null_condition("hash", max_tokens, None)
  ids[:len(names)] = [tag_id(name, vocab_size) for name in names]
  mask[:len(names)] = True
  return ids, mask


class NullCondition(nn.Module):
  """Learned null tokens [L, C] that replace empty and dropped-out condition rows."""
  max_tokens: int
  features: int
  dropout_prob: float = 0.0

  def setup(self):
    self.tokens = self.param("null_embedding", logical(nn.initializers.normal(0.02),
                                                       (None, "caption")),
                             (self.max_tokens, self.features), jnp.float32)

  def null(self, batch):
    """The null condition for `batch` rows: (tokens [B, L, C], mask all True [B, L])."""
    tokens = jnp.broadcast_to(self.tokens, (batch, self.max_tokens, self.features))
    return tokens, jnp.ones((batch, self.max_tokens), bool)

  def __call__(self, tokens, mask, deterministic=True):
    """Rows with no valid token, and (unless deterministic) a random dropout_prob share of rows,
    become the null condition. Dropout draws from the 'dropout' rng stream."""
    use_null = ~mask.any(-1)
    if not deterministic and self.dropout_prob > 0:
      drop = jax.random.bernoulli(self.make_rng("dropout"), self.dropout_prob, use_null.shape)
      use_null = use_null | drop
    null_tokens, null_mask = self.null(tokens.shape[0])
    tokens = jnp.where(use_null[:, None, None], null_tokens, tokens.astype(jnp.float32))
    return tokens, jnp.where(use_null[:, None], null_mask, mask)


class TagEncoder(nn.Module):
  """Hashed tag ids [B, L] + mask → condition tokens [B, L, C] + mask."""
  vocab_size: int
  features: int
  max_tokens: int
  dropout_prob: float = 0.0

  def setup(self):
    self.embedding = self.param("embedding", logical(nn.initializers.normal(0.02),
                                                     ("vocab", "caption")),
                                (self.vocab_size, self.features), jnp.float32)
    self.null_condition = NullCondition(self.max_tokens, self.features, self.dropout_prob)

  def null(self, batch):
    return self.null_condition.null(batch)

  def __call__(self, ids, mask, deterministic=True):
    tokens = jnp.take(self.embedding, ids, axis=0)
    return self.null_condition(tokens, mask, deterministic)


class PrecomputedEncoder(nn.Module):
  """Precomputed tokens [B, L, C] + mask → the same, with the learned null condition."""
  features: int
  max_tokens: int
  dropout_prob: float = 0.0

  def setup(self):
    self.null_condition = NullCondition(self.max_tokens, self.features, self.dropout_prob)

  def null(self, batch):
    return self.null_condition.null(batch)

  def __call__(self, tokens, mask, deterministic=True):
    return self.null_condition(tokens, mask, deterministic)


def null_condition(encoder, max_tokens, features):
  """(cond, cond_mask) of an image with no condition: zeros, and an all-False mask that makes
  the model use its learned null condition."""
  cond = (np.zeros(max_tokens, np.int32) if encoder == "hash"
          else np.zeros((max_tokens, features), np.float32))
  return cond, np.zeros(max_tokens, bool)


def load_precomputed(path, max_tokens, features, key=None):
  """(tokens float32 [max_tokens, C], mask bool [max_tokens]) from an [L, C] array, L ≤ max:
  an .npy file, or entry `key` of an .npz / .safetensors file (no key: its only array).

  Rows beyond L are zero and masked out. L = 0 gives the null condition (with a warning).
  """
  array = read_array(path, key)
  where = f"{path}[{key}]" if key is not None else str(path)
  if array.ndim != 2 or array.shape[1] != features or array.shape[0] > max_tokens:
    raise UserError(f"{where}: condition array has shape {tuple(array.shape)}, expected "
                    f"[L, {features}] with L <= {max_tokens} (tags.max_tokens)")
  if array.dtype.kind not in "fiu":
    raise UserError(f"{where}: condition array has dtype {array.dtype}, expected numbers")
  if not np.isfinite(array).all():
    raise UserError(f"{where}: condition array has non-finite values (NaN or inf)")
  if array.shape[0] == 0:
    warnings.warn(f"{where}: empty condition: using the null condition", stacklevel=2)
  tokens, mask = null_condition("precomputed", max_tokens, features)
  tokens[:array.shape[0]] = array
  mask[:array.shape[0]] = True
  return tokens, mask


def load_condition(source, max_tokens, features):
  """The precomputed encoder's (tokens, mask) for a condition source: an ArrayRef
  (data/tag_sources.py), or None for an image without an array (the null condition)."""
  if source is None:
    warnings.warn("image has no precomputed array: using the null condition", stacklevel=2)
    return null_condition("precomputed", max_tokens, features)
  return load_precomputed(source.path, max_tokens, features, source.key)


def make_condition(tags_cfg, features):
  """The per-image condition callable of `tags_cfg.encoder`: source -> (cond, cond_mask).

  'hash' takes a tag list (tokenize_tags), 'precomputed' an ArrayRef or None (load_condition);
  `features` is the model's caption_channels. A partial, not a lambda: grain pickles it into
  its worker processes.
  """
  if tags_cfg.encoder == "hash":
    return functools.partial(tokenize_tags, vocab_size=tags_cfg.vocab_size,
                             max_tokens=tags_cfg.max_tokens)
  if tags_cfg.encoder == "precomputed":
    return functools.partial(load_condition, max_tokens=tags_cfg.max_tokens, features=features)
  raise UserError(f"tags.encoder must be 'hash' or 'precomputed', got {tags_cfg.encoder!r}")
