"""DC-AE parity with diffusers' AutoencoderDC (random weights, torch CPU) and importer errors."""

import json

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderDC as TorchAutoencoderDC
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from linearsr_jax.errors import UserError
from linearsr_jax.interop.diffusers_vae import import_autoencoder_dc
from linearsr_jax.models import autoencoder

# Small configs covering the architecture's switches. `size` is the test image (H, W).
CONFIGS = {
    # SANA-like: mixed block types, multi-scale attention, stride-2 conv down, interpolate up.
    "conv_interpolate": dict(size=(32, 48), latent_channels=8, attention_head_dim=8,
                             encoder_block_types=["ResBlock", "ResBlock", "EfficientViTBlock"],
                             decoder_block_types=["ResBlock", "ResBlock", "EfficientViTBlock"
                                                 ], encoder_block_out_channels=[8, 16, 32],
                             decoder_block_out_channels=[8, 16,
                                                         32], encoder_layers_per_block=[1, 1, 2],
                             decoder_layers_per_block=[1, 1, 2], encoder_qkv_multiscales=[[], [],
                                                                                          [5]],
                             decoder_qkv_multiscales=[[], [], [5]], downsample_block_type="Conv",
                             upsample_block_type="interpolate", decoder_norm_types="rms_norm",
                             decoder_act_fns="silu", scaling_factor=0.41407),
    # DC-AE-in-1.0-like: no full-resolution layers, pixel (un)shuffle, batch norm + relu per block,
    # two attention scales. An 8×16 image leaves 2×4 = head_dim positions: diffusers' quadratic
    # attention branch.
    "shuffle_batchnorm":
        dict(size=(8, 16), latent_channels=8, attention_head_dim=8,
             encoder_block_types=["ResBlock", "ResBlock", "EfficientViTBlock"],
             decoder_block_types=["ResBlock", "ResBlock", "EfficientViTBlock"],
             encoder_block_out_channels=[8, 16, 32], decoder_block_out_channels=[8, 16,
                                                                                 32],
             encoder_layers_per_block=[0, 1, 1], decoder_layers_per_block=[0, 2, 1],
             encoder_qkv_multiscales=[[], [], [3, 5]], decoder_qkv_multiscales=[[], [],
                                                                                [3, 5]],
             downsample_block_type="pixel_unshuffle", upsample_block_type="pixel_shuffle",
             decoder_norm_types=["batch_norm", "batch_norm",
                                 "rms_norm"], decoder_act_fns=["relu", "relu",
                                                               "silu"], scaling_factor=0.3189),
    # Four levels, attention at two of them and at full resolution in the decoder, no latent
    # shortcuts, other activations, encoder and decoder of different widths.
    "deep_mixed": dict(
        size=(32, 32), latent_channels=4, attention_head_dim=8, encoder_block_types=[
            "EfficientViTBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"
        ], decoder_block_types=["ResBlock", "EfficientViTBlock", "ResBlock", "EfficientViTBlock"],
        encoder_block_out_channels=[8, 16, 16, 32], decoder_block_out_channels=[16, 16, 32, 32],
        encoder_layers_per_block=[1, 1, 1, 1], decoder_layers_per_block=[1, 1, 1, 1],
        encoder_qkv_multiscales=[[3], [], [], [5]], decoder_qkv_multiscales=[[], [5], [], []],
        downsample_block_type="pixel_unshuffle", upsample_block_type="interpolate",
        decoder_norm_types=["rms_norm", "batch_norm", "batch_norm",
                            "rms_norm"], decoder_act_fns=["gelu", "silu", "mish",
                                                          "relu"], encoder_out_shortcut=False,
        decoder_in_shortcut=False, decoder_conv_act_fn="silu", scaling_factor=1.7),
}


def architecture(name: str) -> dict:
  return {k: v for k, v in CONFIGS[name].items() if k != "size"}


def torch_model(name: str, seed: int = 0) -> tuple[TorchAutoencoderDC, tuple[int, int]]:
  """A diffusers model with random weights, norms and BN statistics away from identity."""
  torch.manual_seed(seed)
  model = TorchAutoencoderDC(**architecture(name)).eval()
  size = CONFIGS[name]["size"]
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.3)
        module.running_var.uniform_(0.5, 2.0)
      if isinstance(module, torch.nn.BatchNorm2d) or type(module).__name__ == "RMSNorm":
        if module.weight is not None:
          module.weight.uniform_(0.5, 1.5)
        if module.bias is not None:
          module.bias.normal_(0, 0.2)
  return model, size


def rel_err(a, b) -> float:
  return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_import_matches_diffusers(name, tmp_path):
  model, (h, w) = torch_model(name)
  model.save_pretrained(tmp_path)
  images = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1
  with torch.no_grad():
    ref_latents = model.encode(images).latent.numpy()
    ref_decoded = model.decode(torch.from_numpy(ref_latents)).sample.numpy()

  config, params = import_autoencoder_dc(tmp_path)
  json.dumps(config)  # the config is what a params directory stores
  jax_model = autoencoder.build(config)
  nhwc = images.numpy().transpose(0, 2, 3, 1)
  encode = jax.jit(lambda p, x: jax_model.apply({"params": p}, x, method="encode"))
  decode = jax.jit(lambda p, z: jax_model.apply({"params": p}, z, method="decode"))
  latents = encode(params, nhwc)
  decoded = decode(params, ref_latents.transpose(0, 2, 3, 1))

  assert jax_model.factor == model.spatial_compression_ratio
  assert config["scaling_factor"] == pytest.approx(model.config.scaling_factor)
  assert rel_err(latents, ref_latents.transpose(0, 2, 3, 1)) <= 1e-5
  assert rel_err(decoded, ref_decoded.transpose(0, 2, 3, 1)) <= 1e-5


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
  path = tmp_path_factory.mktemp("dcae")
  torch_model("conv_interpolate")[0].save_pretrained(path)
  return path


def corrupted_copy(src, dst, edit):
  """A copy of a save_pretrained dir whose state dict went through `edit`."""
  dst.mkdir()
  (dst / "config.json").write_text((src / "config.json").read_text())
  tensors = load_file(src / "diffusion_pytorch_model.safetensors")
  edit(tensors)
  save_file(tensors, dst / "diffusion_pytorch_model.safetensors")
  return dst


def test_missing_tensor_is_named(saved_model, tmp_path):
  name = "decoder.up_blocks.2.1.attn.to_qkv_multiscale.0.proj_out.weight"
  bad = corrupted_copy(saved_model, tmp_path / "bad", lambda t: t.pop(name))
  with pytest.raises(UserError, match=f"missing tensor '{name}'"):
    import_autoencoder_dc(bad)


def test_wrong_shape_is_named(saved_model, tmp_path):
  name = "encoder.down_blocks.0.0.conv1.weight"
  bad = corrupted_copy(saved_model, tmp_path / "bad",
                       lambda t: t.update({name: torch.zeros(8, 8, 5, 5)}))
  with pytest.raises(UserError, match=f"tensor '{name}' has shape"):
    import_autoencoder_dc(bad)


def test_extra_tensor_is_named(saved_model, tmp_path):
  bad = corrupted_copy(saved_model, tmp_path / "bad",
                       lambda t: t.update({"decoder.extra.weight": torch.zeros(3)}))
  with pytest.raises(UserError, match="decoder.extra.weight"):
    import_autoencoder_dc(bad)


def test_other_model_is_refused(tmp_path):
  other = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2)
  other.save_pretrained(tmp_path)
  with pytest.raises(UserError, match="AutoencoderKL, expected a AutoencoderDC"):
    import_autoencoder_dc(tmp_path)
  # The same weights under an AutoencoderDC config: the first tensor that does not fit is named.
  config = tmp_path / "dcae.json"
  config.write_text(json.dumps(architecture("conv_interpolate")))
  with pytest.raises(UserError, match=r"tensor '(en|de)coder\.[\w.]+'"):
    import_autoencoder_dc(tmp_path / "diffusion_pytorch_model.safetensors", config_path=config)


def test_bad_config_is_a_user_error():
  with pytest.raises(UserError, match="unknown block type 'ViT'"):
    autoencoder.autoencoder_config({"encoder_block_types": "ViT"})
  with pytest.raises(UserError, match="decoder_act_fns has 2 entries"):
    autoencoder.autoencoder_config({"decoder_act_fns": ["silu", "relu"]})


def test_random_init_is_torch_like():
  """Fresh params have torch's default init scale (bound 1/sqrt(fan_in)): realistic benches."""
  model, _ = torch_model("conv_interpolate")
  jax_model = autoencoder.build(architecture("conv_interpolate"))
  params = autoencoder.init_params(jax_model, seed=0)
  kernel = np.asarray(params["decoder"]["up_blocks_2_0"]["attn"]["to_q"]["kernel"])
  torch_weight = model.decoder.up_blocks[2][0].attn.to_q.weight.detach().numpy()
  assert kernel.shape == torch_weight.T.shape
  assert np.abs(kernel).max() == pytest.approx(np.abs(torch_weight).max(), rel=0.1)
