"""A config's model and latent space, built in one place and checked against each other: the
training run, the tools and the benches all build them here."""

from linearsr_jax.errors import UserError
from linearsr_jax.models.dit import DiTConfig
from linearsr_jax.models.latent_space import make_latent_space
from linearsr_jax.models.sr_model import SRModel, TagsConfig


def build_model(config, load_latent_params: bool = True):
  """(SRModel, latent space) of a resolved config. load_latent_params=False reads only the
  latent space's headers (shapes for compiling, no weights)."""
  latent_space = make_latent_space(config.latent, load_params=load_latent_params)
  try:
    dit_cfg = DiTConfig.from_dict(config.model.to_dict())
  except ValueError as e:
    raise UserError(f"config.model: {e}") from e
  if dit_cfg.latent_channels != latent_space.channels:
    raise UserError(f"model.latent_channels={dit_cfg.latent_channels} but the latent space "
                    f"has {latent_space.channels} channels")
  return SRModel(dit_cfg, TagsConfig.from_config(config.tags)), latent_space
