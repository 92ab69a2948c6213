"""Attention: SANA's ReLU linear attention, softmax attention, and the projection module.

Tensors are [batch, tokens, heads, head_dim].
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from linearsr_jax.models.layers import Dense, RMSNorm

# diffusers' SanaLinearAttnProcessor2_0 divides by (normaliser + 1e-15).
LINEAR_ATTENTION_EPS = 1e-15


def relu_linear_attention(q, k, v, key_mask=None, eps: float = LINEAR_ATTENTION_EPS):
  """o_i = relu(q_i)·Σ_j relu(k_j)ᵀ v_j / (relu(q_i)·Σ_j relu(k_j) + eps), all in float32.

  Cost O(N·d²): the key/value summary [heads, d, d] is formed once. No 1/sqrt(d) scale, as in
  SANA. `key_mask` [B, N] (True = keep) drops keys from both sums.
  """
  out_dtype = q.dtype
  q = jax.nn.relu(q.astype(jnp.float32))
  k = jax.nn.relu(k.astype(jnp.float32))
  v = v.astype(jnp.float32)
  if key_mask is not None:
    k = k * key_mask[:, :, None, None].astype(jnp.float32)
  kv = jnp.einsum("bnhd,bnhe->bhde", k, v)
  k_sum = jnp.sum(k, axis=1)
  numerator = jnp.einsum("bnhd,bhde->bnhe", q, kv)
  denominator = jnp.einsum("bnhd,bhd->bnh", q, k_sum)[..., None]
  return (numerator / (denominator + eps)).astype(out_dtype)


def softmax_attention(q, k, v, key_mask=None):
  """Scaled dot-product attention with the softmax in float32; `key_mask` [B, M] True = keep.

  Masked keys get a -1e4 bias, like diffusers, so a fully masked row degrades to uniform
  attention instead of NaN.
  """
  scale = q.shape[-1]**-0.5
  logits = jnp.einsum("bnhd,bmhd->bhnm", q, k).astype(jnp.float32) * scale
  if key_mask is not None:
    logits = logits + jnp.where(key_mask, 0.0, -1e4)[:, None, None, :]
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhnm,bmhd->bnhd", weights, v)


ATTENTION_KERNELS = {"linear": relu_linear_attention, "softmax": softmax_attention}
QK_NORMS = (None, "rms_norm_across_heads")


class Attention(nn.Module):
  """Multi-head attention with projections named as in diffusers (to_q, to_k, to_v, to_out).

  `qk_norm` = "rms_norm_across_heads" normalises q and k over all heads (SANA-1.5). `gather`:
  Dense.gather for the projections of the image tokens (q and out; k and v too in
  self-attention).
  """
  heads: int
  head_dim: int
  kind: str = "linear"
  qkv_bias: bool = False
  qk_norm: str | None = None
  dtype: Any = jnp.float32
  gather: bool = False

  @nn.compact
  def __call__(self, x, context=None, key_mask=None):
    gather_kv = self.gather and context is None
    context = x if context is None else context
    inner = self.heads * self.head_dim
    dense = lambda name, gather: Dense(inner, ("embed", "heads"), self.qkv_bias, self.dtype, gather=
                                       gather, name=name)
    q = dense("to_q", self.gather)(x)
    k = dense("to_k", gather_kv)(context)
    v = dense("to_v", gather_kv)(context)
    if self.qk_norm == "rms_norm_across_heads":
      q = RMSNorm(1e-5, "heads", name="norm_q")(q)
      k = RMSNorm(1e-5, "heads", name="norm_k")(k)
    elif self.qk_norm is not None:
      raise ValueError(f"qk_norm must be None or 'rms_norm_across_heads', got {self.qk_norm!r}")
    split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)
    q, k, v = (nn.with_logical_constraint(
        split(t), ("activation_batch", "activation_length", "activation_heads", None))
               for t in (q, k, v))
    o = ATTENTION_KERNELS[self.kind](q, k, v, key_mask)
    o = o.reshape(*o.shape[:2], inner)
    return Dense(x.shape[-1], ("heads", "embed"), True, self.dtype, gather=self.gather,
                 name="to_out")(o)
