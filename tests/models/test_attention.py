"""Attention kernels against float64 NumPy O(N²) evaluations of their formulas."""

import jax.numpy as jnp
import numpy as np
import pytest

from linearsr_jax.models.attention import relu_linear_attention, softmax_attention


def linear_reference(q, k, v, mask):
  """o_i = Σ_j (relu(q_i)·relu(k_j)) v_j / Σ_j relu(q_i)·relu(k_j), pairwise, in float64."""
  q = np.maximum(q.astype(np.float64), 0)
  k = np.maximum(k.astype(np.float64), 0)
  scores = np.einsum("bnhd,bmhd->bhnm", q, k) * mask[:, None, None, :]
  numerator = np.einsum("bhnm,bmhd->bnhd", scores, v.astype(np.float64))
  return numerator / (scores.sum(-1).transpose(0, 2, 1)[..., None] + 1e-15)


def softmax_reference(q, k, v, mask):
  logits = np.einsum("bnhd,bmhd->bhnm", q.astype(np.float64), k) / np.sqrt(q.shape[-1])
  logits = np.where(mask[:, None, None, :], logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhnm,bmhd->bnhd", w, v.astype(np.float64))


def random_qkv(seed, b, n, m, h, d):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((b, n, h, d)).astype(np.float32)
  k = rng.standard_normal((b, m, h, d)).astype(np.float32)
  v = rng.standard_normal((b, m, h, d)).astype(np.float32)
  mask = rng.random((b, m)) < 0.7
  mask[:, 0] = True  # at least one key per row
  return q, k, v, mask


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 4), (2, 17, 17, 3, 8), (3, 63, 63, 2, 32),
                                   (1, 257, 257, 1, 16)])
@pytest.mark.parametrize("masked", [False, True])
def test_linear_attention_matches_pairwise_float64(shape, masked):
  q, k, v, mask = random_qkv(sum(shape), *shape)
  if not masked:
    mask = np.ones_like(mask)
  got = np.asarray(
      relu_linear_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                            jnp.asarray(mask) if masked else None))
  want = linear_reference(q, k, v, mask)
  assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


def test_linear_attention_normaliser_is_float32_under_bfloat16():
  q, k, v, mask = random_qkv(0, 2, 100, 100, 2, 32)
  got = relu_linear_attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)))
  assert got.dtype == jnp.bfloat16
  want = linear_reference(q, k, v, np.ones_like(mask))
  assert np.max(np.abs(np.asarray(got, np.float32) - want)) / np.max(np.abs(want)) <= 2e-2


@pytest.mark.parametrize("shape", [(2, 13, 7, 2, 8), (1, 64, 300, 4, 16)])
def test_softmax_attention_matches_float64(shape):
  q, k, v, mask = random_qkv(7, *shape)
  got = np.asarray(
      softmax_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask)))
  want = softmax_reference(q, k, v, mask)
  assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
