"""Flow matching in SANA's convention: x_σ = (1−σ)·x0 + σ·x1, velocity target x1 − x0.

σ ∈ [0, 1] is the flow time with data at σ=0 and the source at σ=1. The source x1 is
Gaussian noise (`source='noise'`, SANA and the paper) or, for `source='lr'`, the latent of the
upsampled LR image plus σ_s·ε, so the path runs from the upsampled LR to HR (ResShift / InDI
style) and an untrained model already returns roughly the upsampled LR.

The network sees σ·timestep_scale (1000 for imported SANA weights, which were trained on
integer-like timesteps).
"""

import jax
import jax.numpy as jnp
import ml_collections

from linearsr_jax.errors import UserError
from linearsr_jax.resize import upsample_bicubic

SOURCES = ("noise", "lr")
TIMESTEP_SAMPLINGS = ("logit_normal", "uniform")

# Keeps σ off the exact endpoints so logit(σ) stays finite.
_SIGMA_EPS = 1e-6


def default_config() -> ml_collections.ConfigDict:
  """The `diffusion` config section: flow, timestep sampling, experts and sampler defaults."""
  return ml_collections.ConfigDict({
      "source": "noise",  # 'noise' | 'lr' (LR-anchored flow)
      "lr_source_noise": 0.1,  # σ_s: noise added to the upsampled-LR latent for 'lr'
      "timestep_sampling": "logit_normal",  # 'logit_normal' | 'uniform'
      "logit_mean": 0.0,
      "logit_std": 1.0,
      # Share of training draws at σ = 1 exactly, the source, where the sampler takes its first
      # step: for source 'lr' the prediction there is the conditional mean given the LR image
      # (the PSNR-best output of a one-step sampler), which a continuous density never draws and
      # which, without source noise, nearby σ do not teach (x_σ there already reveals x0).
      "source_prob": 0.0,
      "train_shift": 1.0,  # flow shift applied to training σ draws
      "timestep_scale": 1000.0,  # model time = σ · timestep_scale (SANA: 1000)
      "experts": {  # how many: each stage's (stages.<stage>.num_experts)
          "split": "snr",  # 'snr' (hierarchical log-SNR bisection) | 'uniform'
          "lambda_min": -7.04,  # log-SNR at the noisy end of the bisected range
          "lambda_max": 8.89,  # log-SNR at the clean end
          "anchor_t": 0.875,  # first split: structure (t > anchor) vs refinement
      },
      "sampler": {
          "solver": "dpm++2m",  # 'euler' | 'dpm++2m'
          "steps": 20,
          "shift": 3.0,  # flow shift of the sampling schedule (SANA 1024 px: 3)
          "guidance_scale": 1.0,  # 1 = no classifier-free guidance (skips the null pass)
      },
  })


def check_config(cfg):
  """Raises UserError for values the functions below would misread."""
  if cfg.source not in SOURCES:
    raise UserError(f"diffusion.source must be one of {SOURCES}, got '{cfg.source}'")
  if cfg.timestep_sampling not in TIMESTEP_SAMPLINGS:
    raise UserError(f"diffusion.timestep_sampling must be one of {TIMESTEP_SAMPLINGS}, "
                    f"got '{cfg.timestep_sampling}'")
  if cfg.logit_std <= 0:
    raise UserError(f"diffusion.logit_std must be > 0, got {cfg.logit_std}")
  if cfg.train_shift <= 0:
    raise UserError(f"diffusion.train_shift must be > 0, got {cfg.train_shift}")


def _per_sample(sigma, x):
  """Broadcasts σ of shape [B] against x of shape [B, ...]."""
  return jnp.reshape(sigma, sigma.shape + (1,) * (x.ndim - sigma.ndim)).astype(x.dtype)


def interpolate(x0, x1, sigma):
  """x_σ = (1−σ)·x0 + σ·x1, σ of shape [B]."""
  s = _per_sample(sigma, x0)
  return (1 - s) * x0 + s * x1


def velocity_target(x0, x1):
  """d x_σ / dσ = x1 − x0."""
  return x1 - x0


def shift_sigma(sigma, shift):
  """SANA / SD3 flow shift σ' = s·σ / (1 + (s−1)·σ); s > 1 spends more time at high noise."""
  return shift * sigma / (1 + (shift - 1) * sigma)


def unshift_sigma(sigma, shift):
  """Inverse of `shift_sigma`."""
  return sigma / (shift - (shift - 1) * sigma)


def sample_sigma(key, shape, cfg, lo=0.0, hi=1.0):
  """Training σ from the configured density (then shifted by train_shift), restricted to [lo, hi].

  lo / hi broadcast against `shape` (per-expert intervals). Restriction is exact: the draw is
  the configured distribution conditioned on landing in [lo, hi] (truncated normal in logit
  space, or uniform on the unshifted interval), not a clip. Where hi is 1, a share
  cfg.source_prob of the draws is σ = 1 itself.
  """
  if cfg.source_prob > 0:  # split only then, so that the other configs draw as before
    key, key_source = jax.random.split(key)
    at_source = jax.random.bernoulli(key_source, cfg.source_prob, shape)
    at_source &= jnp.broadcast_to(jnp.asarray(hi) >= 1.0, shape)
    return jnp.where(at_source, 1.0, _continuous_sigma(key, shape, cfg, lo, hi))
  return _continuous_sigma(key, shape, cfg, lo, hi)


def _continuous_sigma(key, shape, cfg, lo, hi):
  lo = unshift_sigma(jnp.clip(jnp.asarray(lo, jnp.float32), _SIGMA_EPS, 1 - _SIGMA_EPS),
                     cfg.train_shift)
  hi = unshift_sigma(jnp.clip(jnp.asarray(hi, jnp.float32), _SIGMA_EPS, 1 - _SIGMA_EPS),
                     cfg.train_shift)
  if cfg.timestep_sampling == "uniform":
    u = jax.random.uniform(key, shape, jnp.float32, jnp.broadcast_to(lo, shape),
                           jnp.broadcast_to(hi, shape))
  elif cfg.timestep_sampling == "logit_normal":
    logit = lambda p: jnp.log(p) - jnp.log1p(-p)
    lower = (logit(lo) - cfg.logit_mean) / cfg.logit_std
    upper = (logit(hi) - cfg.logit_mean) / cfg.logit_std
    z = jax.random.truncated_normal(key, jnp.broadcast_to(lower, shape),
                                    jnp.broadcast_to(upper, shape), shape, jnp.float32)
    u = jax.nn.sigmoid(cfg.logit_mean + cfg.logit_std * z)
    u = jnp.clip(u, lo, hi)  # sigmoid rounding may step a hair outside the interval
  else:
    raise UserError(f"unknown diffusion.timestep_sampling '{cfg.timestep_sampling}'")
  return shift_sigma(u, cfg.train_shift)


def lr_source_latent(cfg, latent_space, latent_params, lr, scale: int):
  """What source 'lr' anchors the flow at: the latent of the bicubic-upsampled LR image (lr in
  [-1, 1], [B, h, w, 3]); None for source 'noise', which needs no encode."""
  if cfg.source != "lr":
    return None
  return latent_space.encode_fn(latent_params, upsample_bicubic(lr, scale))


def draw_source(key, shape, cfg, lr_latent=None):
  """The flow's σ=1 end x1: noise ε, or for source 'lr' lr_latent + σ_s·ε.

  lr_latent is the autoencoder latent of the upsampled LR image, same shape as the HR latent.
  """
  eps = jax.random.normal(key, shape, jnp.float32)
  if cfg.source == "noise":
    return eps
  if cfg.source == "lr":
    if lr_latent is None:
      raise UserError("diffusion.source='lr' needs the latent of the upsampled LR image")
    if tuple(lr_latent.shape) != tuple(shape):
      raise UserError(f"LR latent shape {tuple(lr_latent.shape)} != latent shape {tuple(shape)}")
    return lr_latent.astype(jnp.float32) + cfg.lr_source_noise * eps
  raise UserError(f"diffusion.source must be one of {SOURCES}, got '{cfg.source}'")


def per_sample_loss(prediction, target):
  """Mean squared error over all but the batch axis, in float32: shape [B]."""
  err = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
  return err.reshape(err.shape[0], -1).mean(-1)


def flow_loss(predict, x0, x1, sigma, weights=None):
  """Flow-matching loss mean_b w_b·‖predict(x_σ, σ) − (x1 − x0)‖² / n.

  predict(x_sigma, sigma) -> velocity, σ in flow units [B]. weights [B] (e.g. SNR weighting)
  multiply the per-sample losses; None means all ones.
  """
  losses = per_sample_loss(predict(interpolate(x0, x1, sigma), sigma), velocity_target(x0, x1))
  if weights is not None:
    losses = losses * weights.astype(jnp.float32)
  return losses.mean()
