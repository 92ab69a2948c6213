"""Rolling a stage back to its branch point when training diverges after a branch.

The guard's state (the first PSNR, the losses it took in, its rollbacks) is rebuilt on resume
from the stage's metrics log, which a resume cuts at the checkpoint it restores: each rollback
is a row there, right after the row that triggered it, and the loop checkpoints the rolled-back
state at once. So a resumed guard is the one of a run that never stopped, and the rollbacks
it counts are the ones that happened, not the rows judged again.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

ROLLBACKS = "guard/rollbacks"  # a rollback row: {step, ROLLBACKS: count so far, TRIGGER: metric}
TRIGGER = "guard/trigger"
LOSS, PSNR = "train/loss", "val/psnr_y"


class DivergenceGuard:
  """After a branch, roll back to the branch point and multiply the learning rate by
  `lr_factor`, at most `max_rollbacks` times, when validation PSNR falls `psnr_drop_db` below
  the stage's first value (a collapse, as the paper saw when fine-tuning from a late
  checkpoint) or a logged training loss exceeds `loss_factor` times the median of those logged
  before it (an explosion; non-finite losses are the skip counter's business)."""

  def __init__(self, cfg, start_params):
    """`start_params`: the branch point on the mesh, or None (a first stage: no guard)."""
    self.cfg, self.start_params = cfg, start_params
    self.enabled = start_params is not None and cfg.enabled
    self.first, self.rollbacks, self.losses = None, 0, []

  def start(self, first_eval: dict):
    self.first = first_eval.get(PSNR)

  def resume(self, rows: list):
    """The guard as it was when the metrics log held `rows` (the resumed checkpoint's): each
    logged finite loss taken in while the guard was armed, but the one it rolled back on."""
    evaluations = [r for r in rows if any(k.startswith("val/") for k in r)]
    if evaluations:
      self.start(evaluations[0])
    for row, after in zip(rows, rows[1:] + [{}]):
      if ROLLBACKS in row:
        self.rollbacks = int(row[ROLLBACKS])
      elif LOSS in row and self._armed() and np.isfinite(row[LOSS]) and (after.get(TRIGGER)
                                                                         != LOSS):
        self.losses.append(row[LOSS])

  def _armed(self) -> bool:
    return self.enabled and self.rollbacks < self.cfg.max_rollbacks

  def collapsed(self, val: dict) -> bool:
    if not self._armed() or self.first is None:
      return False
    psnr = val.get(PSNR, float("nan"))
    return not np.isfinite(psnr) or psnr < self.first - self.cfg.psnr_drop_db

  def exploded(self, loss: float) -> bool:
    if not self._armed() or not np.isfinite(loss):
      return False
    if self.losses and loss > self.cfg.loss_factor * np.median(self.losses):
      return True
    self.losses.append(loss)
    return False

  def roll_back(self, state, tx, shardings, name, step, trigger, why):
    """(the state at the branch point with a lower learning rate, the metrics row that records
    the rollback); `trigger`: the metric that diverged, LOSS or PSNR."""
    self.rollbacks += 1
    lr_scale = float(state.lr_scale) * self.cfg.lr_factor
    log.warning(
        "stage %s step %d: %s; rolling back to the branch point with learning-rate "
        "scale %.3g", name, step, why, lr_scale)
    # New buffers on the mesh for each: the train step donates the state, so neither may
    # alias the other nor the kept branch point.
    copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings.params)
    params, ema_params = copy(self.start_params), copy(self.start_params)
    state = state.replace(params=params, ema_params=ema_params,
                          opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(params),
                          lr_scale=jnp.asarray(lr_scale, jnp.float32), consecutive_skips=jnp.zeros(
                              (), jnp.int32))
    return state, {"step": step, ROLLBACKS: self.rollbacks, TRIGGER: trigger}
