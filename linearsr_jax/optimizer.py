"""Optimizer from the config: AdamW or Adafactor (CAME-like factored moments), warmup, clipping
of each expert's gradient by its own norm."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

NAMES = ("adamw", "adafactor")
SCHEDULES = ("constant", "cosine")


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      dict(
          name="adamw",  # "adamw" | "adafactor" (factored second moment, like CAME)
          learning_rate=1e-4,
          warmup_steps=100,
          schedule="constant",  # "constant" | "cosine" (decays over the stage's step budget)
          b1=0.9,
          b2=0.999,
          eps=1e-8,
          weight_decay=0.0,
          grad_clip=1.0,  # global-norm clipping of each expert's gradient; 0 disables
          ema_decay=0.999,  # EMA of params, used for evaluation
      ))


def learning_rate_schedule(cfg, total_steps: int):
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
  if cfg.schedule == "constant":
    after = optax.constant_schedule(cfg.learning_rate)
  elif cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(cfg.learning_rate, max(total_steps - cfg.warmup_steps, 1))
  else:
    raise ValueError(f"optimizer.schedule must be 'constant' or 'cosine', got {cfg.schedule!r}")
  return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def clip_by_expert_norm(max_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping of each expert on its own. Every leaf of the stacked params carries
  the experts on its leading axis; expert e's gradient is scaled by min(1, max_norm / ‖g_e‖).
  One norm over all experts would clip each of them harder as their number grows (E equal
  experts have √E times one's norm) and let one expert's spike shrink the others' steps."""

  def update(updates, state, params=None):
    del params
    squares = sum(
        jnp.sum(jnp.square(g.astype(jnp.float32)), axis=tuple(range(1, g.ndim)))
        for g in jax.tree.leaves(updates))
    norms = jnp.sqrt(squares)  # [E]
    scale = jnp.where(norms > max_norm, max_norm / jnp.maximum(norms, 1e-30), 1.0)
    return jax.tree.map(lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype),
                        updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  lr = learning_rate_schedule(cfg, total_steps)
  if cfg.name == "adamw":
    opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  elif cfg.name == "adafactor":
    opt = optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None)
  else:
    raise ValueError(f"optimizer.name must be 'adamw' or 'adafactor', got {cfg.name!r}")
  return optax.chain(clip_by_expert_norm(cfg.grad_clip), opt) if cfg.grad_clip else opt
