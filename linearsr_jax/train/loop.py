"""The training run: stages in order, each ending at its ESGF knee or its step budget, the next
one starting from the previous stage's knee checkpoint.

workdir/
  config.json                 the resolved config
  run.json                    each finished stage: knee step, reason, where the next began
  <stage>/stage.json          where this stage started from (stage, step, checkpoint path)
  <stage>/checkpoints/<step>/ Orbax: state, data_iter, metrics
  <stage>/metrics.jsonl       one line per evaluation (and per logged train step)
  <stage>/knee.png            the validation curves with the knee marked
  <stage>/events.*            TensorBoard
"""

import dataclasses
import json
import logging
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers, periodic_actions

from linearsr_jax import config_check, sharding
from linearsr_jax.atomic import atomic_file
from linearsr_jax.data import latent_crops, pipeline
from linearsr_jax.data.image_io import read_image
from linearsr_jax.errors import UserError
from linearsr_jax.models.dit import DiTConfig
from linearsr_jax.models.latent_space import make_latent_space
from linearsr_jax.models.sr_model import SRModel, TagsConfig
from linearsr_jax.models.tags import make_condition
from linearsr_jax.train import esgf, init_from, optimizer
from linearsr_jax.train.checkpoint import StageCheckpoints
from linearsr_jax.train.state import (abstract_train_state, branch_params, create_train_state,
                                      expert_param_shapes, overlay_params)
from linearsr_jax.train.step import make_train_step
from linearsr_jax.train.validation import Validator

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StageResult:
  name: str
  knee_step: int
  reason: str
  fired: bool
  params: object  # EMA params of the knee checkpoint, experts stacked, sharded on the mesh


def write_json(path, obj):
  with atomic_file(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


class MetricsLog:
  """metrics.jsonl: append-only, truncated on resume to what the restored checkpoint saw, so a
  resumed run writes exactly the lines a run that never stopped would have."""

  def __init__(self, path: Path, resume_step):
    self.path = path
    lines = path.read_text().splitlines() if path.exists() else []
    self.rows = [json.loads(l) for l in lines if l.strip()]
    if resume_step is None:
      self.rows = []
    else:
      self.rows = [r for r in self.rows if r["step"] <= resume_step]
    with atomic_file(path, "w") as f:
      f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in self.rows)

  def append(self, row: dict):
    self.rows.append(row)
    if jax.process_index() == 0:
      with open(self.path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")

  def evaluations(self):
    return [r for r in self.rows if any(k.startswith("val/") for k in r)]


class Run:
  """Everything shared by the stages of one run.

  With load_weights=False nothing is read but headers: the latent params are ShapeDtypeStructs
  that carry their shardings, which is what shape checks and ahead-of-time compilation need.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir, load_weights: bool = True,
               devices=None):
    config_check.validate(config, len(jax.devices() if devices is None else devices))
    self.config = config
    self.workdir = Path(workdir)
    self.mesh = sharding.make_mesh(dict(config.mesh), devices)
    self.rules = [tuple(r) for r in config.sharding_rules]
    self.latent_space = make_latent_space(config.latent, load_params=load_weights)
    dit_cfg = DiTConfig.from_dict(config.model.to_dict())
    self.model = SRModel(dit_cfg, TagsConfig.from_config(config.tags))
    # The DC-AE's params are an argument of the jitted steps, replicated on the mesh.
    latent_shapes = self.latent_space.abstract_params()
    self.latent_shardings = jax.tree.map(lambda _: sharding.replicated(self.mesh), latent_shapes)
    self.latent_params = (
        sharding.put_on_mesh(self.latent_space.params, self.latent_shardings) if load_weights
        else sharding.abstract_on_mesh(latent_shapes, self.latent_shardings))
    self.pretrained = None  # {'dit/...': array} overlaid on the first stage's fresh params
    if config.train.init_from and load_weights:
      self.pretrained = init_from.pretrained_leaves(config.train.init_from, dit_cfg,
                                                    expert_param_shapes(self.model))
    # Tag lists or precomputed arrays -> (cond, cond_mask), as the encoder takes them.
    self.tokenize = make_condition(config.tags, config.model.caption_channels)
    eval_source = pipeline.make_source(config.data, "eval", config.tags.encoder)
    eval_examples = pipeline.make_eval_examples(eval_source, config.data, self.tokenize,
                                                align=self.latent_space.factor)
    self.eval_batches = list(pipeline.eval_batches(eval_examples, config.data.eval.batch_size))
    self.train_source = self._train_source(load_weights)

  def _train_source(self, load_weights: bool):
    """The config's images, or with data.hr_latents="precomputed" the stored crops and latents
    (read only with load_weights: shapes and compilation need no data)."""
    data = self.config.data
    if data.hr_latents == "encode":
      return pipeline.make_source(data, "train", self.config.tags.encoder)
    if not load_weights:
      return None
    if not data.latents_path:
      raise UserError("data.hr_latents='precomputed' needs data.latents_path, a `linearsr data "
                      "encode` output")
    return latent_crops.LatentCropSource(data.latents_path, data, self.latent_space.channels,
                                         self.latent_space.factor)

  def optimizer(self, name: str):
    """(optax transformation, merged optimizer config) of stage `name`."""
    opt_cfg = ml_collections.ConfigDict(self.config.optimizer.to_dict())
    opt_cfg.update(self.config.stages[name].optimizer.to_dict())
    return optimizer.make_optimizer(opt_cfg, self.config.stages[name].max_steps), opt_cfg

  def abstract_state(self, name: str):
    """(TrainState of ShapeDtypeStructs with shardings, shardings) of stage `name`."""
    tx, _ = self.optimizer(name)
    return abstract_train_state(self.model, tx, self.config.stages[name].num_experts, self.mesh,
                                self.rules)

  def diffusion_config(self, name: str):
    """The `diffusion` section with stage `name`'s number of experts."""
    cfg = ml_collections.ConfigDict(self.config.diffusion.to_dict())
    cfg.experts.num_experts = self.config.stages[name].num_experts
    return cfg

  def jit_train_step(self, name: str, shardings):
    """Stage `name`'s train step, jitted with the shardings training uses: step(state, batch,
    latent_params) -> (state, metrics), the state donated."""
    tx, opt_cfg = self.optimizer(name)
    step = make_train_step(self.model, self.latent_space, tx, self.diffusion_config(name),
                           scale=self.config.data.scale, cond_dropout=self.config.tags.dropout_prob,
                           ema_decay=opt_cfg.ema_decay)
    return jax.jit(step, in_shardings=(shardings, pipeline.batch_sharding(self.mesh),
                                       self.latent_shardings),
                   out_shardings=(shardings, sharding.replicated(self.mesh)), donate_argnums=0)

  def stage_names(self):
    return config_check.stage_names(self.config)


def run(config: ml_collections.ConfigDict, workdir) -> list:
  """Trains every stage of `config.stage_order`; resumes whatever the workdir already holds."""
  if "://" in str(workdir):
    raise UserError(f"--workdir {workdir}: URLs are not supported; give a directory every host "
                    "sees (e.g. a gcsfuse mount of the bucket, or NFS)")
  workdir = Path(workdir).absolute()  # Orbax refuses relative checkpoint paths
  # Everything that can be wrong with the config, the weights or the data is found here, before
  # the workdir is touched, so a corrected command starts clean.
  the_run = Run(config, workdir)
  names = the_run.stage_names()
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    write_json(workdir / "config.json", json.loads(config.to_json_best_effort()))
  results, previous = [], None
  for index, name in enumerate(names):
    previous = train_stage(the_run, name, index, previous)
    results.append(previous)
    if jax.process_index() == 0:
      write_json(workdir / "run.json", {"stages": [
          {"name": r.name, "knee_step": r.knee_step, "fired": r.fired, "reason": r.reason}
          for r in results]})
  return results


def _finished(stage_dir: Path):
  path = stage_dir / "result.json"
  return json.loads(path.read_text()) if path.exists() else None


def _start(the_run: Run, index: int, previous, tx, num_experts, shardings):
  """(state, shardings, start params for the guard or None, where the stage starts from)."""
  config = the_run.config
  rng = jax.random.PRNGKey(config.seed + 1000 * index)
  if previous is not None:
    start = branch_params(previous.params, num_experts, shardings.params)
    state, shardings = create_train_state(the_run.model, tx, num_experts, rng, the_run.mesh,
                                          the_run.rules, start)
    origin = {"stage": previous.name, "knee_step": previous.knee_step,
              "checkpoint": str(the_run.workdir / previous.name / "checkpoints" /
                                str(previous.knee_step)),
              "experts_initialised_identically": num_experts > 1 and
              jax.tree.leaves(previous.params)[0].shape[0] == 1}
    return state, shardings, start, origin
  state, shardings = create_train_state(the_run.model, tx, num_experts, rng, the_run.mesh,
                                        the_run.rules)
  if the_run.pretrained is None:
    return state, shardings, None, {"stage": None}
  state = state.replace(
      params=overlay_params(state.params, the_run.pretrained, shardings.params),
      ema_params=overlay_params(state.ema_params, the_run.pretrained, shardings.ema_params))
  return state, shardings, None, {"stage": None, "init_from": config.train.init_from,
                                  "pretrained_tensors": len(the_run.pretrained)}


def train_stage(the_run: Run, name: str, index: int, previous):
  """Trains one stage to its knee (or budget) and returns the knee checkpoint's EMA params,
  still sharded on the mesh."""
  config, stage_cfg = the_run.config, the_run.config.stages[name]
  train_cfg = config.train
  stage_dir = the_run.workdir / name
  stage_dir.mkdir(parents=True, exist_ok=True)
  is_lead = jax.process_index() == 0
  tx, _ = the_run.optimizer(name)
  num_experts = stage_cfg.num_experts
  diffusion_cfg = the_run.diffusion_config(name)

  detector = esgf.KneeDetector(config.esgf)
  ckpts = StageCheckpoints(stage_dir / "checkpoints", keep_latest=train_cfg.keep_latest,
                           best_metric=train_cfg.best_metric, best_mode=train_cfg.best_mode,
                           protected_steps=detector.candidate_steps)
  abstract, shardings = the_run.abstract_state(name)
  done = _finished(stage_dir)
  if done is not None:  # resuming a run whose stage already ended: reuse its knee
    knee_state, _ = ckpts.restore(done["knee_step"], abstract)
    ckpts.close()
    return StageResult(name, done["knee_step"], done["reason"], done["fired"],
                       knee_state.ema_params)

  state, shardings, start_params, origin = _start(the_run, index, previous, tx, num_experts,
                                                  shardings)
  if is_lead and not (stage_dir / "stage.json").exists():
    write_json(stage_dir / "stage.json", {"name": name, "num_experts": num_experts,
                                          "init_from": origin})
  data_cfg = ml_collections.ConfigDict(config.data.to_dict())
  data_cfg.seed = config.data.seed + index  # each stage sees its own crop order
  data_iter = iter(pipeline.make_train_dataset(the_run.train_source, data_cfg, the_run.tokenize))
  latest = ckpts.latest_step()
  if latest is not None:
    del state  # free its buffers before the restore allocates the same again
    state, _ = ckpts.restore(latest, abstract, data_iter)
    log.info("stage %s: resumed from checkpoint %d", name, latest)
  mlog = MetricsLog(stage_dir / "metrics.jsonl", latest)
  for row in mlog.evaluations():
    detector.update(row["step"], row)
  validator = Validator(the_run.model, the_run.latent_space, the_run.latent_params, diffusion_cfg,
                        the_run.eval_batches, scale=config.data.scale,
                        sampler_steps=train_cfg.eval_steps, seed=config.seed)
  bicubic = validator.bicubic()
  writer = metric_writers.create_default_writer(stage_dir, just_logging=not is_lead)
  step_fn = the_run.jit_train_step(name, shardings)
  report = periodic_actions.ReportProgress(num_train_steps=stage_cfg.max_steps, writer=writer)
  guard = _DivergenceGuard(train_cfg.guard, start_params)

  def evaluate_and_save(step, state):
    val, sr = validator(state.ema_params)
    row = {"step": step, **val, **bicubic, "train/lr_scale": float(state.lr_scale)}
    mlog.append(row)
    writer.write_scalars(step, row)
    writer.write_images(step, {"val/lr_bicubic_sr_hr": validator.image_grid(sr)})
    ckpts.save(step, state, data_iter, val)
    log.info("stage %s step %d: %s", name, step, ", ".join(
        f"{k}={v:.4f}" for k, v in val.items()))
    return detector.update(step, val), val

  step = int(state.step)
  decision = detector.decision
  if latest is None:
    decision, first = evaluate_and_save(0, state)
    guard.start(first)
  elif mlog.evaluations():
    guard.start(mlog.evaluations()[0])
  with jax.set_mesh(the_run.mesh), nn.logical_axis_rules(the_run.rules):
    while step < stage_cfg.max_steps and not (stage_cfg.esgf and decision.fired):
      batch = pipeline.make_global_batch(next(data_iter), the_run.mesh)
      state, metrics = step_fn(state, batch, the_run.latent_params)
      step += 1
      report(step)
      if step % train_cfg.log_every == 0:
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        writer.write_scalars(step, scalars)
        mlog.append({"step": step, **scalars})
        if guard.exploded(scalars["train/loss"]):
          state = guard.roll_back(state, tx, shardings, name, step,
                                  f"training loss exploded to {scalars['train/loss']:.4g}")
      if int(state.consecutive_skips) >= train_cfg.max_consecutive_skips:
        good = ckpts.latest_step()
        if good is None:
          raise UserError(f"stage {name}: {train_cfg.max_consecutive_skips} consecutive "
                          "non-finite steps before the first checkpoint")
        log.warning("stage %s: %d consecutive non-finite steps at step %d; restoring checkpoint "
                    "%d", name, int(state.consecutive_skips), step, good)
        del state
        state, _ = ckpts.restore(good, abstract, data_iter)
        step = int(state.step)
        continue
      if step % train_cfg.eval_every == 0 or step == stage_cfg.max_steps:
        decision, val = evaluate_and_save(step, state)
        if guard.collapsed(val):
          state = guard.roll_back(state, tx, shardings, name, step,
                                  f"validation PSNR collapsed to {val['val/psnr_y']:.2f} dB")
  ckpts.wait()
  del state, start_params, guard  # only the knee's EMA params go on to the next stage
  if stage_cfg.esgf and decision.fired:
    knee_step, reason, fired = decision.knee_step, decision.reason, True
  else:
    knee_step, fired = ckpts.latest_step(), False
    reason = f"step budget {stage_cfg.max_steps} reached ({decision.reason})"
  knee_state, _ = ckpts.restore(knee_step, abstract)
  ckpts.close()
  if is_lead:
    records = [(r["step"], r) for r in mlog.evaluations()]
    ending = f"ESGF knee at step {knee_step}" if fired else f"step budget {stage_cfg.max_steps}"
    plot = esgf.plot_curves(records, decision, config.esgf, stage_dir / "knee.png",
                            title=f"stage {name}: {ending}")
    writer.write_images(step, {"esgf/knee_plot": read_image(plot)[None]})
    write_json(stage_dir / "result.json", {"knee_step": knee_step, "reason": reason,
                                           "fired": fired, "final_step": step})
  writer.flush()
  log.info("stage %s ends at step %d; next stage starts from step %d (%s)", name, step,
           knee_step, reason)
  return StageResult(name, knee_step, reason, fired, knee_state.ema_params)


class _DivergenceGuard:
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
    self.first = first_eval.get("val/psnr_y")

  def _armed(self) -> bool:
    return self.enabled and self.rollbacks < self.cfg.max_rollbacks

  def collapsed(self, val: dict) -> bool:
    if not self._armed() or self.first is None:
      return False
    psnr = val.get("val/psnr_y", float("nan"))
    return not np.isfinite(psnr) or psnr < self.first - self.cfg.psnr_drop_db

  def exploded(self, loss: float) -> bool:
    if not self._armed() or not np.isfinite(loss):
      return False
    if self.losses and loss > self.cfg.loss_factor * np.median(self.losses):
      return True
    self.losses.append(loss)
    return False

  def roll_back(self, state, tx, shardings, name, step, why):
    self.rollbacks += 1
    lr_scale = float(state.lr_scale) * self.cfg.lr_factor
    log.warning("stage %s step %d: %s; rolling back to the branch point with learning-rate "
                "scale %.3g", name, step, why, lr_scale)
    # New buffers on the mesh for each: the train step donates the state, so neither may
    # alias the other nor the kept branch point.
    copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings.params)
    params, ema_params = copy(self.start_params), copy(self.start_params)
    return state.replace(params=params, ema_params=ema_params,
                         opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(params),
                         lr_scale=jnp.asarray(lr_scale, jnp.float32),
                         consecutive_skips=jnp.zeros((), jnp.int32))
