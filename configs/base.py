"""Sections shared by every config; size-specific files override the model and the budget."""

import ml_collections

from linearsr_jax.sharding import DEFAULT_RULES


def model_config(**fields) -> ml_collections.ConfigDict:
  """The `model` section: the fields of linearsr_jax.models.dit.DiTConfig."""
  base = dict(depth=2, hidden=64, heads=2, cross_heads=2, cross_head_dim=32, caption_channels=64,
              latent_channels=48, patch_size=1, mlp_ratio=2.5, attention="linear", qk_norm=None,
              attention_bias=False, lr_channels=16, lr_stem_convs=1, lr_stem_width=32,
              scan_layers=True, remat="none", dtype="float32")
  unknown = set(fields) - set(base)
  if unknown:
    raise KeyError(f"unknown model fields {sorted(unknown)}")
  cfg = ml_collections.ConfigDict(base | fields)
  # qk_norm is None or a string; declare the type so `--config.model.qk_norm=...` works.
  cfg.qk_norm = ml_collections.FieldReference(fields.get("qk_norm"), field_type=str)
  return cfg


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Mesh axis sizes; -1 takes the remaining devices. Logical rules map model axis names to them.
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "expert": 1})
  config.sharding_rules = [list(rule) for rule in DEFAULT_RULES]
  return config
