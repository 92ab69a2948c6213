"""The train step of a distill stage: the student's one forward regressed onto the frozen
teacher's sampled endpoint, both from the same starting point, in latent space.

The teacher's targets are computed on the fly inside the same jit (its params a step argument,
under stop_gradient), so a step costs the teacher's whole sampler (steps × (1 + a null pass
under guidance) forwards) plus the student's forward and backward; or, with
`config.distill.targets`, read with the batch ('x1', 'teacher_x0'; train/distill_targets.py).
Optional terms as SinSR and the one-step SR models use them: the student's latent against the
ground truth's (`distill.gt_weight`), and LPIPS (Alex) of its decoded image against the HR crop
(`distill.perceptual_weight`); both off by default.
"""

import jax
import jax.numpy as jnp

from linearsr_jax.diffusion import distill, experts, flow
from linearsr_jax.evaluate import metrics
from linearsr_jax.train.step import guarded_update, hr_latent


def make_teacher_targets(model, latent_space, diffusion_cfg, *, scale: int):
  """targets(batch, key, latent_params, teacher_params) -> (x1, teacher's x0): the sampler's
  start drawn from `key`, as `samplers.sample` draws it, and the teacher's output from there."""
  apply_fn = experts.model_apply(model)

  def targets(batch, key, latent_params, teacher_params):
    lr = batch["lr"]
    lr_latent = flow.lr_source_latent(diffusion_cfg, latent_space, latent_params, lr, scale)
    shape = jax.eval_shape(lambda b, p: hr_latent(latent_space, b, p), batch, latent_params).shape
    x1 = flow.draw_source(key, shape, diffusion_cfg, lr_latent)
    null = (jnp.zeros_like(batch["cond"]), jnp.zeros_like(batch["cond_mask"]))
    return x1, distill.teacher_endpoint(apply_fn, teacher_params, x1, _context(batch),
                                        diffusion_cfg, null)

  return targets


def _context(batch):
  """The student learns the condition the teacher was guided by: no condition dropout."""
  return (batch["lr"], batch["cond"], batch["cond_mask"])


def make_distill_step(model, latent_space, tx, diffusion_cfg, distill_cfg, *, scale: int,
                      ema_decay: float):
  """step(state, batch, latent_params, teacher_params) -> (state, metrics); pure, for jax.jit
  with donated state. batch as for train/step.py, with precomputed targets ('x1',
  'teacher_x0') or without; teacher_params are stacked experts."""
  apply_fn = experts.model_apply(model)
  teacher_targets = make_teacher_targets(model, latent_space, diffusion_cfg, scale=scale)
  lpips_params = (metrics.lpips_params("alex") if distill_cfg.perceptual_weight > 0 else None)

  def loss_fn(params, key, batch, latent_params, teacher_params):
    if "teacher_x0" in batch:
      x1, target = batch["x1"], batch["teacher_x0"]
    else:
      x1, target = teacher_targets(batch, key, latent_params, teacher_params)
    student = distill.one_step(apply_fn, params, x1, _context(batch), diffusion_cfg.timestep_scale)
    to_teacher = flow.per_sample_loss(student, target).mean()
    loss, scalars = to_teacher, {"train/loss_teacher": to_teacher}
    if distill_cfg.gt_weight > 0:
      to_gt = flow.per_sample_loss(student, hr_latent(latent_space, batch, latent_params)).mean()
      loss, scalars["train/loss_gt"] = loss + distill_cfg.gt_weight * to_gt, to_gt
    if distill_cfg.perceptual_weight > 0:
      unit = lambda images: jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)
      sr = latent_space.decode_fn(latent_params, student)
      hr = batch["hr"] if "hr" in batch else latent_space.decode_fn(latent_params,
                                                                    batch["hr_latent"])
      perceptual = metrics.lpips(unit(sr), unit(hr), lpips_params).mean()
      loss = loss + distill_cfg.perceptual_weight * perceptual
      scalars["train/loss_perceptual"] = perceptual
    return loss, scalars

  return guarded_update(loss_fn, tx, ema_decay)
