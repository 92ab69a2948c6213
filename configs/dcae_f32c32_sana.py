"""DC-AE f32c32 of SANA 1.0 (mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers), as its config.json.

32× down-sampling, 32 latent channels, ~312M params. Field names are diffusers'
AutoencoderDC arguments (linearsr_jax/models/autoencoder.py reads them); use it as the
`latent.dcae` section with `latent.kind = "dcae"`.
"""

import ml_collections

_LEVELS = ("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock",
           "EfficientViTBlock")


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "in_channels": 3,
      "latent_channels": 32,
      "attention_head_dim": 32,
      "encoder_block_types": _LEVELS,
      "decoder_block_types": _LEVELS,
      "encoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
      "decoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
      "encoder_layers_per_block": (2, 2, 2, 3, 3, 3),
      "decoder_layers_per_block": (3, 3, 3, 3, 3, 3),
      "encoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
      "decoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
      "downsample_block_type": "Conv",
      "upsample_block_type": "interpolate",
      "decoder_norm_types": "rms_norm",
      "decoder_act_fns": "silu",
      "encoder_out_shortcut": True,
      "decoder_in_shortcut": True,
      "decoder_conv_act_fn": "relu",
      "scaling_factor": 0.41407,
  })
