"""An image's condition as the model takes it, made in the data workers (pure NumPy):

- `tokenize_tags`: normalise, dedupe and sort the tags, then hash each into a fixed vocabulary
  with CRC-32 (stable across processes and runs, unlike Python's salted `hash`). Returns ids
  [L] and a mask [L] for models/tags.py's TagEncoder.
- `load_precomputed`: tokens made offline by any text encoder, from [L, C] arrays (.npy
  sidecars, or entries of an .npz / .safetensors file), checked for shape and finite values,
  for models/tags.py's PrecomputedEncoder.
- `make_condition`: the data pipeline's per-image callable for the configured encoder.
An image with no tags or no array gets the null condition (an all-False mask), never a crash.
Reading tag and array files (sidecars, mappings) lives in tag_sources.py.
"""

import functools
import re
import warnings
import zlib

import numpy as np

from linearsr_jax.data.tag_sources import read_array, split_tags
from linearsr_jax.errors import UserError


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


def null_condition(encoder, max_tokens, features):
  """(cond, cond_mask) of an image with no condition: zeros, and an all-False mask that makes
  the model use its learned null condition."""
  cond = (np.zeros(max_tokens, np.int32) if encoder == "hash" else np.zeros(
      (max_tokens, features), np.float32))
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
