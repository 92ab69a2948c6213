"""The full SR network: condition encoder (tags or precomputed tokens) → DiT.

    velocity = SRModel(dit_cfg, tags).apply({"params": p}, x_t, t, lr, cond, cond_mask)

`cond` is hashed tag ids [B, L] (encoder 'hash') or precomputed tokens [B, L, C]
('precomputed'); rows whose mask is all False use the learned null condition. That is both the
fallback for images without tags and the unconditional branch of classifier-free guidance:
the null context is simply an all-False mask.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from linearsr_jax.models.dit import DiT, DiTConfig, example_inputs
from linearsr_jax.models.tags import PrecomputedEncoder, TagEncoder


@dataclasses.dataclass(frozen=True)
class TagsConfig:
  encoder: str = "hash"  # 'hash' | 'precomputed'
  vocab_size: int = 4096
  max_tokens: int = 16

  @classmethod
  def from_config(cls, cfg) -> "TagsConfig":
    return cls(cfg.encoder, cfg.vocab_size, cfg.max_tokens)


class SRModel(nn.Module):
  dit: DiTConfig
  tags: TagsConfig

  @nn.compact
  def __call__(self, x_t, t, lr, cond, cond_mask):
    width = self.dit.caption_channels
    if self.tags.encoder == "hash":
      encoder = TagEncoder(self.tags.vocab_size, width, self.tags.max_tokens, name="tag_encoder")
    elif self.tags.encoder == "precomputed":
      encoder = PrecomputedEncoder(width, self.tags.max_tokens, name="tag_encoder")
    else:
      raise ValueError(f"tags.encoder must be 'hash' or 'precomputed', got {self.tags.encoder!r}")
    tokens, mask = encoder(cond, cond_mask)
    return DiT(self.dit, name="dit")(x_t, t, lr, tokens, mask)


def sr_example_inputs(dit: DiTConfig, tags: TagsConfig, batch, latent_hw):
  """Zero inputs (x_t, t, lr, cond, cond_mask) for init / eval_shape."""
  x_t, t, lr, _, _ = example_inputs(dit, batch, latent_hw)
  if tags.encoder == "hash":
    cond = jnp.zeros((batch, tags.max_tokens), jnp.int32)
  else:
    cond = jnp.zeros((batch, tags.max_tokens, dit.caption_channels))
  return x_t, t, lr, cond, jnp.zeros((batch, tags.max_tokens), bool)
