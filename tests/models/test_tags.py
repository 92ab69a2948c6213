"""Tag conditioning: normalisation, stable hashing, the encoders' null condition, precomputed
arrays."""

import zlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linearsr_jax.errors import UserError
from linearsr_jax.data import conditions
from linearsr_jax.models import tags


def test_normalisation_is_order_and_case_independent():
  assert conditions.normalize_tags(" Dog, cat ,DOG,,  red   Car ") == ["cat", "dog", "red car"]
  assert conditions.normalize_tags(["red car", "Cat", "dog"]) == ["cat", "dog", "red car"]
  a = conditions.tokenize_tags(["Dog", "cat", "tree"], 1000, 6)
  b = conditions.tokenize_tags("TREE, dog,Cat, cat", 1000, 6)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


def test_ids_are_crc32_buckets_and_mask_marks_the_tags():
  ids, mask = conditions.tokenize_tags(["tree", "cat"], 1000, 4)
  assert ids.dtype == np.int32 and mask.dtype == bool
  np.testing.assert_array_equal(ids[:2], [zlib.crc32(b"cat") % 1000, zlib.crc32(b"tree") % 1000])
  np.testing.assert_array_equal(mask, [True, True, False, False])
  ids, mask = conditions.tokenize_tags([f"t{i}" for i in range(10)], 1000, 4)
  assert mask.all() and len(ids) == 4


def test_empty_tags_warn_and_mask_nothing():
  with pytest.warns(UserWarning, match="null condition"):
    ids, mask = conditions.tokenize_tags(" , ", 1000, 3)
  assert not mask.any()


def _encoder_and_params(dropout_prob=0.0):
  encoder = tags.TagEncoder(vocab_size=64, features=8, max_tokens=3, dropout_prob=dropout_prob)
  ids = jnp.zeros((2, 3), jnp.int32)
  params = nn.unbox(encoder.init(jax.random.PRNGKey(0), ids, jnp.ones((2, 3), bool)))
  return encoder, params


def test_encoder_tokens_mask_and_null_condition():
  encoder, params = _encoder_and_params()
  with pytest.warns(UserWarning, match="no tags"):
    batch = [conditions.tokenize_tags(t, 64, 3) for t in (["Cat", "dog"], "dog, cat", [])]
  ids = jnp.asarray(np.stack([b[0] for b in batch]))
  mask = jnp.asarray(np.stack([b[1] for b in batch]))
  tokens, out_mask = jax.jit(encoder.apply)(params, ids, mask)
  assert tokens.shape == (3, 3, 8)
  table = np.asarray(params["params"]["embedding"])
  np.testing.assert_array_equal(tokens[0, :2], table[np.asarray(ids[0, :2])])
  np.testing.assert_array_equal(tokens[0], tokens[1])
  np.testing.assert_array_equal(out_mask[:2], [[True, True, False]] * 2)
  null_tokens, null_mask = encoder.apply(params, 1, method=tags.TagEncoder.null)
  np.testing.assert_array_equal(tokens[2], null_tokens[0])
  np.testing.assert_array_equal(null_tokens[0],
                                params["params"]["null_condition"]["null_embedding"])
  assert out_mask[2].all() and null_mask.all()


def test_condition_dropout_uses_the_null_condition_at_the_configured_rate():
  encoder, params = _encoder_and_params(dropout_prob=0.25)
  n = 4000
  ids = jnp.ones((n, 3), jnp.int32)
  mask = jnp.ones((n, 3), bool)
  tokens, _ = jax.jit(
      lambda p, r: encoder.apply(p, ids, mask, deterministic=False, rngs={"dropout": r}))(
          params, jax.random.PRNGKey(1))
  null = np.asarray(params["params"]["null_condition"]["null_embedding"])
  dropped = np.all(np.asarray(tokens) == null, axis=(1, 2))
  # Binomial(4000, 0.25): standard deviation ≈ 27; allow 5 of them.
  assert abs(dropped.sum() - 0.25 * n) < 5 * np.sqrt(n * 0.25 * 0.75)
  kept, _ = encoder.apply(params, ids, mask)  # deterministic: no dropout
  assert not np.any(np.all(np.asarray(kept) == null, axis=(1, 2)))


def test_null_condition_gets_gradients_only_from_null_rows():
  encoder, params = _encoder_and_params()
  ids = jnp.zeros((2, 3), jnp.int32)
  loss = lambda p, mask: jnp.sum(encoder.apply(p, ids, mask)[0])
  full = jax.grad(loss)(params, jnp.ones((2, 3), bool))
  assert not np.any(full["params"]["null_condition"]["null_embedding"])
  empty_row = jax.grad(loss)(params, jnp.array([[True, False, False], [False] * 3]))
  np.testing.assert_array_equal(empty_row["params"]["null_condition"]["null_embedding"], 1.0)


def test_precomputed_arrays_load_pad_and_reject_wrong_shapes(tmp_path):
  from safetensors.numpy import save_file

  array = np.arange(10, dtype=np.float32).reshape(2, 5)
  np.save(tmp_path / "a.npy", array)
  save_file({"cond": array}, str(tmp_path / "a.safetensors"))
  for name in ("a.npy", "a.safetensors"):
    tokens, mask = conditions.load_precomputed(tmp_path / name, max_tokens=4, features=5)
    np.testing.assert_array_equal(tokens[:2], array)
    assert not tokens[2:].any()
    np.testing.assert_array_equal(mask, [True, True, False, False])
  with pytest.raises(UserError, match=r"shape \(2, 5\), expected \[L, 6\]"):
    conditions.load_precomputed(tmp_path / "a.npy", max_tokens=4, features=6)
  with pytest.raises(UserError, match="L <= 1"):
    conditions.load_precomputed(tmp_path / "a.npy", max_tokens=1, features=5)
  np.save(tmp_path / "b.npy", np.zeros(5, np.float32))
  with pytest.raises(UserError, match=r"shape \(5,\)"):
    conditions.load_precomputed(tmp_path / "b.npy", max_tokens=4, features=5)
  with pytest.raises(UserError, match="no such"):
    conditions.load_precomputed(tmp_path / "missing.npy", max_tokens=4, features=5)
  (tmp_path / "c.npy").write_bytes(b"not an array")
  with pytest.raises(UserError, match="not a readable"):
    conditions.load_precomputed(tmp_path / "c.npy", max_tokens=4, features=5)


def test_precomputed_encoder_replaces_empty_arrays_by_null(tmp_path):
  np.save(tmp_path / "empty.npy", np.zeros((0, 5), np.float32))
  with pytest.warns(UserWarning, match="null condition"):
    tokens, mask = conditions.load_precomputed(tmp_path / "empty.npy", max_tokens=2, features=5)
  encoder = tags.PrecomputedEncoder(features=5, max_tokens=2)
  batch_tokens = jnp.stack([jnp.ones((2, 5)), jnp.asarray(tokens)])
  batch_mask = jnp.stack([jnp.array([True, False]), jnp.asarray(mask)])
  params = nn.unbox(encoder.init(jax.random.PRNGKey(0), batch_tokens, batch_mask))
  out, out_mask = encoder.apply(params, batch_tokens, batch_mask)
  np.testing.assert_array_equal(out[0], batch_tokens[0])
  np.testing.assert_array_equal(out[1], params["params"]["null_condition"]["null_embedding"])
  np.testing.assert_array_equal(out_mask, [[True, False], [True, True]])


def test_encoder_runs_sharded_on_the_mesh():
  from linearsr_jax import sharding

  encoder, params = _encoder_and_params()
  ids = jnp.asarray(
      np.stack([conditions.tokenize_tags([f"tag{i}", "x"], 64, 3)[0] for i in range(8)]))
  mask = jnp.asarray(np.arange(3) < np.arange(8)[:, None] % 3)  # rows with 0, 1, 2 tokens
  expected = encoder.apply(params, ids, mask)
  mesh = sharding.make_mesh({"expert": 4, "data": 2})
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("expert", "data")))
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(sharding.DEFAULT_RULES)):
    out = jax.jit(encoder.apply)(params, *jax.device_put((ids, mask), batch))
  chex.assert_trees_all_equal(out, expected)
  assert out[0].sharding.spec[0] == ("expert", "data")
