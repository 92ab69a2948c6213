"""A config's model and latent space, built in one place: the training run, the tools and the
benches all build them here, from a config `config_check.validate` has passed (it checks the
two against each other and the data)."""

from linearsr_jax.models.dit import DiTConfig
from linearsr_jax.models.latent_space import make_latent_space
from linearsr_jax.models.sr_model import SRModel, TagsConfig


def build_model(config, load_latent_params: bool = True):
  """(SRModel, latent space) of a resolved config. load_latent_params=False reads only the
  latent space's headers (shapes for compiling, no weights)."""
  latent_space = make_latent_space(config.latent, load_params=load_latent_params)
  dit_cfg = DiTConfig.from_dict(config.model.to_dict())
  return SRModel(dit_cfg, TagsConfig.from_config(config.tags)), latent_space
