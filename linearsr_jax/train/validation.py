"""Validation during training: sample SR images for a fixed eval batch and score them.

PSNR / SSIM on BT.601 Y and LPIPS (Alex, v0.1) against HR, the same metric code as
`linearsr eval`. The bicubic baseline on the same pairs is computed once.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from linearsr_jax.evaluate import metrics
from linearsr_jax.inference.resize import upsample_bicubic
from linearsr_jax.inference.super_resolve import make_super_resolve

METRIC_NAMES = ("psnr_y", "ssim_y", "lpips_alex")


def metric_key(name: str, prefix: str = "") -> str:
  """Where a score is logged: 'val/psnr_y', or with prefix 'bicubic_' its bicubic baseline."""
  return f"val/{prefix}{name}"


# What every evaluation returns: the keys ESGF and the best checkpoint can follow (the bicubic
# baselines are logged beside them but never change).
METRIC_KEYS = tuple(metric_key(name) for name in METRIC_NAMES)


def to_unit(images):
  """[-1, 1] -> [0, 1], the metrics' range."""
  return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)


def on_host(x):
  """The whole value of a possibly multi-process array, on every host (under the training
  mesh the sampler's batch is sharded over the processes' devices, so device_get cannot)."""
  return multihost_utils.process_allgather(x, tiled=True)


class Validator:
  """Scores params on fixed eval batches ('lr', 'hr' in [-1, 1], 'cond', 'cond_mask');
  every score is the mean over all eval images."""

  def __init__(self, model, latent_space, latent_params, diffusion_cfg, eval_batches, *,
               scale: int, sampler_steps: int, seed: int = 0, names=METRIC_NAMES):
    keys = ("lr", "hr", "cond", "cond_mask")
    self.batches = [{k: jnp.asarray(b[k]) for k in keys} for b in eval_batches]
    if not self.batches:
      raise ValueError("the eval set is empty")
    self.key = jax.random.PRNGKey(seed)
    self.latent_params = latent_params
    self.scale = scale
    self._sr = jax.jit(make_super_resolve(model, latent_space, diffusion_cfg, scale=scale,
                                          steps=sampler_steps))
    fns = {name: metrics.metric_fn(name) for name in names}
    self._score = jax.jit(lambda sr, hr: {n: f(to_unit(sr), to_unit(hr)) for n, f in fns.items()})

  def _mean_scores(self, images, prefix):
    per_image = [on_host(self._score(sr, b["hr"])) for sr, b in zip(images, self.batches)]
    return {metric_key(name, prefix): float(np.mean(np.concatenate([s[name] for s in per_image])))
            for name in per_image[0]}

  def super_resolve(self, params):
    return [self._sr(params, self.latent_params, b["lr"], b["cond"], b["cond_mask"], self.key)
            for b in self.batches]

  def __call__(self, params):
    """(metrics {'val/<name>': mean}, SR images of the first batch in [-1, 1])."""
    images = self.super_resolve(params)
    return self._mean_scores(images, ""), on_host(images[0])

  def bicubic(self):
    """The bicubic baseline on the same pairs, as {'val/bicubic_<name>': mean}."""
    images = [jnp.clip(upsample_bicubic(b["lr"], self.scale), -1.0, 1.0) for b in self.batches]
    return self._mean_scores(images, "bicubic_")

  def image_grid(self, sr):
    """LR (nearest-upsampled) | bicubic | SR | HR per row of the first batch, uint8."""
    b = self.batches[0]
    lr_big = jnp.repeat(jnp.repeat(b["lr"], self.scale, axis=1), self.scale, axis=2)
    bicubic = jnp.clip(upsample_bicubic(b["lr"], self.scale), -1.0, 1.0)
    rows = jnp.concatenate([lr_big, bicubic, sr, b["hr"]], axis=2)
    return np.asarray(to_unit(rows) * 255.0 + 0.5).astype(np.uint8)
