"""One training step: encode, flow-matching loss over all experts, guarded update, EMA.

A non-finite loss or gradient norm leaves params, EMA and optimizer state untouched (the step
counter and RNG still advance, so the data stream stays in sync) and counts the skip.
"""

import jax
import jax.numpy as jnp
import optax

from linearsr_jax.diffusion import experts, flow


def hr_latent(latent_space, batch, latent_params):
  """The batch's HR latents: precomputed ('hr_latent'), or the HR crops encoded here."""
  return (batch["hr_latent"] if "hr_latent" in batch else latent_space.encode_fn(
      latent_params, batch["hr"]))


def make_train_step(model, latent_space, tx, diffusion_cfg, *, scale: int, cond_dropout: float,
                    ema_decay: float):
  """train_step(state, batch, latent_params) -> (state, metrics); pure, for jax.jit with donated
  state. `latent_params` are the latent space's (a DC-AE's on the mesh, or {}).

  batch: 'hr' [B, H, W, 3] (or its latents, 'hr_latent'), 'lr' [B, H/s, W/s, 3] in [-1, 1],
  'cond', 'cond_mask'.
  """
  apply_fn = experts.model_apply(model)

  def loss_fn(params, key, batch, latent_params):
    key_drop, key_flow = jax.random.split(key)
    x0 = hr_latent(latent_space, batch, latent_params)
    lr_latent = flow.lr_source_latent(diffusion_cfg, latent_space, latent_params, batch["lr"],
                                      scale)
    # Condition dropout: an all-False mask selects the learned null condition, which is what
    # classifier-free guidance later uses as its unconditional branch.
    keep = ~jax.random.bernoulli(key_drop, cond_dropout, batch["cond_mask"].shape[:1])
    mask = batch["cond_mask"] & keep[:, None]
    context = (batch["lr"], batch["cond"], mask)
    loss, per_expert = experts.mixture_loss(apply_fn, params, x0, context, key_flow, diffusion_cfg,
                                            lr_latent)
    return loss, {f"train/loss_expert{i}": per_expert[i] for i in range(per_expert.shape[0])}

  return guarded_update(loss_fn, tx, ema_decay)


def guarded_update(loss_fn, tx, ema_decay: float):
  """train_step(state, *args) -> (state, metrics) minimising loss_fn(params, key, *args) ->
  (loss, {name: scalar}), the key folded from the state's RNG and step: gradient, the update
  skipped where non-finite, EMA. Every stage kind's step is one of these."""

  def train_step(state, *args):
    key = jax.random.fold_in(state.rng, state.step)
    (loss, scalars), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key, *args)
    # Named so that `linearsr compile` tells the update's bytes from the model's (aot/hlo_costs).
    with jax.named_scope("update"):
      grad_norm = optax.tree.norm(grads)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
      params = optax.apply_updates(state.params, updates)
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema_params, params)
      keep_new = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
      state = state.replace(step=state.step + 1, params=keep_new(params, state.params),
                            ema_params=keep_new(ema, state.ema_params),
                            opt_state=keep_new(opt_state, state.opt_state),
                            skipped=state.skipped + (~finite).astype(jnp.int32),
                            consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + 1))
    metrics = {
        "train/loss": loss, "train/grad_norm": grad_norm, "train/skipped": state.skipped,
        "train/finite": finite
    }
    metrics.update(scalars)
    return state, metrics

  return train_step
