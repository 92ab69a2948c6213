"""LR image -> SR image with a trained model: the one sampling path used by validation during
training, `linearsr eval --checkpoint` and `linearsr upscale`.

Images are NHWC in [-1, 1]. The latent of the output has the HR size divided by the latent
space's factor; the sampler starts from noise or, for the LR-anchored flow, from the latent of
the bicubic-upsampled LR image.
"""

import jax
import jax.numpy as jnp

from linearsr_jax.diffusion import experts, flow, samplers
from linearsr_jax.resize import upsample_bicubic


def make_super_resolve(model, latent_space, diffusion_cfg, *, scale: int, **sampler_overrides):
  """sr(params, latent_params, lr, cond, cond_mask, key) -> SR images; jit it once per input
  shape.

  `params` are stacked experts, `latent_params` the latent space's (a DC-AE's, or {} for pixel
  space), both arguments so they can live on a mesh; `sampler_overrides` (steps, solver, shift,
  guidance_scale) replace diffusion_cfg.sampler values. The null context for guidance is an
  all-False mask.
  """
  apply_fn = experts.model_apply(model)

  def super_resolve(params, latent_params, lr, cond, cond_mask, key):
    probe = jax.eval_shape(latent_space.encode_fn, latent_params, upsample_bicubic(lr, scale))
    lr_latent = flow.lr_source_latent(diffusion_cfg, latent_space, latent_params, lr, scale)
    null = (jnp.zeros_like(cond), jnp.zeros_like(cond_mask))
    latents = samplers.sample(apply_fn, params, key, probe.shape, (lr, cond, cond_mask),
                              diffusion_cfg, null_context=null, lr_latent=lr_latent,
                              **sampler_overrides)
    return jnp.clip(latent_space.decode_fn(latent_params, latents), -1.0, 1.0)

  return super_resolve
