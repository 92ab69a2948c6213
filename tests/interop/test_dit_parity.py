"""The Flax DiT against diffusers' PyTorch SanaTransformer2DModel, both directions."""

import jax.numpy as jnp
import numpy as np
import pytest
from diffusers import SanaTransformer2DModel
from safetensors.numpy import load_file

from linearsr_jax.interop import diffusers_sana
from linearsr_jax.models.dit import DiT
from sana_reference import random_sana, reference_inputs, torch_forward

# Four architectures: patch 1 and 2, qk-norm off and on, head counts and depths, non-square.
CASES = {
    "p1_plain": dict(
        config=dict(num_attention_heads=2, attention_head_dim=16, num_layers=2,
                    num_cross_attention_heads=2, cross_attention_head_dim=16,
                    cross_attention_dim=32, caption_channels=24, in_channels=8, out_channels=8,
                    patch_size=1), hw=(12, 20)),
    "p2_qknorm": dict(
        config=dict(num_attention_heads=4, attention_head_dim=8, num_layers=3,
                    num_cross_attention_heads=1, cross_attention_head_dim=32,
                    cross_attention_dim=32, caption_channels=16, in_channels=4, out_channels=4,
                    patch_size=2, qk_norm="rms_norm_across_heads"), hw=(8, 12)),
    "p1_qknorm_bias": dict(
        config=dict(num_attention_heads=1, attention_head_dim=32, num_layers=1,
                    num_cross_attention_heads=4, cross_attention_head_dim=8, cross_attention_dim=32,
                    caption_channels=32, in_channels=6, out_channels=6, patch_size=1,
                    attention_bias=True, qk_norm="rms_norm_across_heads"), hw=(6, 10)),
    "p2_wide": dict(
        config=dict(num_attention_heads=3, attention_head_dim=16, num_layers=2,
                    num_cross_attention_heads=2, cross_attention_head_dim=24,
                    cross_attention_dim=48, caption_channels=20, in_channels=8, out_channels=8,
                    patch_size=2, mlp_ratio=2.0), hw=(12, 20)),
}


def rel_err(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def jax_forward(cfg, params, x, t, cond, mask):
  return np.asarray(
      DiT(cfg).apply({"params": params}, jnp.asarray(x), jnp.asarray(t), None, jnp.asarray(cond),
                     jnp.asarray(mask)))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("scan_layers", [True, False])
def test_import_matches_diffusers_and_export_roundtrips(tmp_path, name, scan_layers):
  case = CASES[name]
  reference = random_sana(seed=len(name), **case["config"])
  reference.save_pretrained(tmp_path / "src")
  inputs = reference_inputs(1, 2, case["hw"], case["config"]["in_channels"], 7,
                            case["config"]["caption_channels"])
  expected = torch_forward(reference, *inputs)

  cfg, params = diffusers_sana.import_transformer(tmp_path / "src", scan_layers=scan_layers)
  assert cfg.scan_layers == scan_layers and cfg.lr_channels == 0
  assert rel_err(jax_forward(cfg, params, *inputs), expected) <= 1e-5

  diffusers_sana.export_transformer(cfg, params, tmp_path / "out")
  exported = load_file(str(tmp_path / "out" / "diffusion_pytorch_model.safetensors"))
  original = {k: v.numpy() for k, v in reference.state_dict().items()}
  assert sorted(exported) == sorted(original)
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  reloaded = SanaTransformer2DModel.from_pretrained(tmp_path / "out").eval()
  np.testing.assert_array_equal(torch_forward(reloaded, *inputs), expected)


@pytest.mark.slow
def test_scan_and_unrolled_blocks_agree(tmp_path):
  reference = random_sana(seed=3, **CASES["p2_qknorm"]["config"])
  reference.save_pretrained(tmp_path / "src")
  inputs = reference_inputs(2, 2, (8, 12), 4, 5, 16)
  outs = []
  for scan in (True, False):
    cfg, params = diffusers_sana.import_transformer(tmp_path / "src", scan_layers=scan)
    outs.append(jax_forward(cfg, params, *inputs))
  np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-5 * np.abs(outs[1]).max())
