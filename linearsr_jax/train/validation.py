"""Validation during training: sample SR images for a fixed eval batch and score them, and
each expert's flow loss on fixed noise.

PSNR / SSIM on BT.601 Y and LPIPS (Alex, v0.1) against HR, the same metric code as
`linearsr eval`. The bicubic baseline on the same pairs is computed once. The names the
curves are logged under: metric_keys.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from linearsr_jax.diffusion import experts, flow
from linearsr_jax.evaluate import metrics
from linearsr_jax.inference.super_resolve import make_super_resolve
from linearsr_jax.resize import upsample_bicubic
from linearsr_jax.run.metric_keys import METRIC_NAMES, flow_loss_key, metric_key


def to_unit(images):
  """[-1, 1] -> [0, 1], the metrics' range."""
  return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)


def on_host(x):
  """The whole value of a possibly multi-process array, on every host (under the training
  mesh the sampler's batch is sharded over the processes' devices, so device_get cannot)."""
  return multihost_utils.process_allgather(x, tiled=True)


class Validator:
  """Scores params on fixed eval batches ('lr', 'hr' in [-1, 1], 'cond', 'cond_mask');
  every score is the mean over all eval images. `sampler` overrides diffusion_cfg.sampler
  (train.eval_steps, or a student's one step)."""

  def __init__(self, model, latent_space, latent_params, diffusion_cfg, eval_batches, *, scale: int,
               sampler: dict, seed: int = 0, names=METRIC_NAMES):
    keys = ("lr", "hr", "cond", "cond_mask")
    self.batches = [{k: jnp.asarray(b[k]) for k in keys} for b in eval_batches]
    if not self.batches:
      raise ValueError("the eval set is empty")
    self.key = jax.random.PRNGKey(seed)
    self.latent_params = latent_params
    self.scale = scale
    self._sr = jax.jit(
        make_super_resolve(model, latent_space, diffusion_cfg, scale=scale, **sampler))
    fns = {name: metrics.metric_fn(name) for name in names}
    self._score = jax.jit(lambda sr, hr: {n: f(to_unit(sr), to_unit(hr)) for n, f in fns.items()})

  def _mean_scores(self, images, prefix):
    per_image = [on_host(self._score(sr, b["hr"])) for sr, b in zip(images, self.batches)]
    return {
        metric_key(name, prefix): float(np.mean(np.concatenate([s[name] for s in per_image])))
        for name in per_image[0]
    }

  def super_resolve(self, params):
    return [
        self._sr(params, self.latent_params, b["lr"], b["cond"], b["cond_mask"], self.key)
        for b in self.batches
    ]

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


class ExpertFlowLosses:
  """Each expert's flow-matching loss on the eval pairs at fixed (x0, source, σ): σ drawn once
  inside each expert's interval from the training density, the source once, so between
  evaluations only the params move the curve: cheap and low in noise. The sampler alone may
  never run an expert (4 steps at shift 3 start at σ = 1, .9, .75, .5, so the refinement
  expert below 0.223 never runs); these curves see every one."""

  def __init__(self, model, latent_space, latent_params, diffusion_cfg, eval_batches, *,
               num_experts: int, scale: int, seed: int = 0):
    apply_fn = experts.model_apply(model)
    cfg = diffusion_cfg
    lo, hi = experts.expert_intervals(experts.boundaries_from_config(cfg.experts, num_experts))

    def fixed_triples(latent_params, hr, lr, key):
      key_sigma, key_source = jax.random.split(key)
      x0 = latent_space.encode_fn(latent_params, hr)
      lr_latent = flow.lr_source_latent(cfg, latent_space, latent_params, lr, scale)
      sigma = flow.sample_sigma(key_sigma, (num_experts, x0.shape[0]), cfg, lo[:, None], hi[:,
                                                                                            None])
      x1 = jnp.stack([
          flow.draw_source(k, x0.shape, cfg, lr_latent)
          for k in jax.random.split(key_source, num_experts)
      ])
      return x0, x1, sigma

    def losses(stacked_params, x0, x1, sigma, lr, cond, cond_mask):

      def one_expert(e):  # lax.map: one forward compiled, the experts run in turn
        params = experts.select_expert(stacked_params, e)
        x_t = flow.interpolate(x0, x1[e], sigma[e])
        v = apply_fn(params, x_t, sigma[e] * cfg.timestep_scale, lr, cond, cond_mask)
        return flow.per_sample_loss(v, flow.velocity_target(x0, x1[e]))

      return jax.lax.map(one_expert, jnp.arange(num_experts))  # [E, batch]

    prepare = jax.jit(fixed_triples)
    base = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    self.fixed = []
    for i, b in enumerate(eval_batches):
      lr = jnp.asarray(b["lr"])
      x0, x1, sigma = prepare(latent_params, jnp.asarray(b["hr"]), lr, jax.random.fold_in(base, i))
      self.fixed.append((x0, x1, sigma, lr, jnp.asarray(b["cond"]), jnp.asarray(b["cond_mask"])))
    self._losses = jax.jit(losses)

  def __call__(self, stacked_params) -> dict:
    """{'val/flow_loss_expert<e>': mean over the eval images}."""
    per_image = np.concatenate([on_host(self._losses(stacked_params, *f)) for f in self.fixed],
                               axis=1)
    return {flow_loss_key(e): float(v) for e, v in enumerate(per_image.mean(axis=1))}
