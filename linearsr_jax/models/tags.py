"""TAG conditioning in the model: condition ids or tokens → condition tokens [B, L, C] + mask.

- `TagEncoder`: learned embeddings of the hashed tag ids (data/conditions.py tokenize_tags).
- `PrecomputedEncoder`: tokens made offline by any text encoder (e.g. SANA's Gemma-2), loaded
  per image by data/conditions.py.
Both encoders own a learned null condition. It replaces rows with no tokens (empty tags fall
back to it, never crash) and, with probability `dropout_prob` in training, any row, which is
what trains the null condition that classifier-free guidance uses.
Turning an image's tags or array into those inputs (in the data workers) is data/conditions.py;
reading tag and array files (sidecars, mappings), data/tag_sources.py.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from linearsr_jax.models.layers import logical

ENCODERS = ("hash", "precomputed")


def default_config() -> ml_collections.ConfigDict:
  """The `tags` config section."""
  return ml_collections.ConfigDict({
      "encoder": "hash",  # 'hash' (TagEncoder) | 'precomputed' (PrecomputedEncoder)
      "vocab_size": 4096,  # hash buckets for 'hash'
      "max_tokens": 16,  # L: tags kept per image / tokens per precomputed array
      "dropout_prob": 0.1,  # training probability of replacing a condition by the null one
  })


class NullCondition(nn.Module):
  """Learned null tokens [L, C] that replace empty and dropped-out condition rows."""
  max_tokens: int
  features: int
  dropout_prob: float = 0.0

  def setup(self):
    self.tokens = self.param("null_embedding",
                             logical(nn.initializers.normal(0.02), (None, "caption")),
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
    self.embedding = self.param("embedding",
                                logical(nn.initializers.normal(0.02), ("vocab", "caption")),
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
