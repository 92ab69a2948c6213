"""DC-AE f32c32 of SANA 1.0 (mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers), as its config.json.

32× down-sampling, 32 latent channels, ~312M params. Field names are diffusers'
AutoencoderDC arguments (linearsr_jax/models/autoencoder.py reads them); use it as the
`latent.dcae` section with `latent.kind = "dcae"`. It differs from diffusers' defaults only in
the block types, the up/down-sampling and the scaling factor.
"""

import ml_collections

from linearsr_jax.models.autoencoder import DEFAULTS

_LEVELS = ("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock",
           "EfficientViTBlock")


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      dict(DEFAULTS, encoder_block_types=_LEVELS, decoder_block_types=_LEVELS,
           downsample_block_type="Conv", upsample_block_type="interpolate", scaling_factor=0.41407))
