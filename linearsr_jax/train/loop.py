"""The training run: stages in order, each ending at its ESGF knee or its step budget, the next
one starting from the previous stage's knee checkpoint. What it writes where: run/run_dir.py.

`Run` holds what the stages share (mesh, model, latent space, data, jitted steps); `train_stage`
is set up or resume -> train until ESGF fires or the budget ends -> finish and hand over the
knee's EMA params.

Over 350 lines on purpose: a stage's set-up, step loop, evaluation and ending share one state
and one order of writes (what a kill at any point leaves must resume), so they stay together.
"""

import collections
import dataclasses
import logging

import flax.linen as nn
import jax
import ml_collections
from clu import parameter_overview

from linearsr_jax import config_check, esgf, lead_decides, optimizer, run_config, sharding, storage
from linearsr_jax.data import eval_set, latent_crops, pipeline, teacher_targets
from linearsr_jax.data.conditions import make_condition
from linearsr_jax.data.image_io import read_image
from linearsr_jax.diffusion import distill
from linearsr_jax.errors import UserError
from linearsr_jax.models.build import build_model
from linearsr_jax.run import kill_points, run_dir
from linearsr_jax.train import init_from, run_fit, run_lock
from linearsr_jax.train.distill_step import make_distill_step
from linearsr_jax.train.distill_teacher import teacher_from_path
from linearsr_jax.train.checkpoint import StageCheckpoints
from linearsr_jax.train.divergence_guard import LOSS, PSNR, DivergenceGuard
from linearsr_jax.train.knee_snapshots import KneeSnapshots, UnreadableSnapshot
from linearsr_jax.train.state import (abstract_train_state, branch_params, create_train_state,
                                      expert_param_shapes, overlay_params)
from linearsr_jax.train.step import make_train_step
from linearsr_jax.train.summaries import Progress, Summaries
from linearsr_jax.train.validation import ExpertFlowLosses, Validator

log = logging.getLogger(__name__)

# A restore after non-finite steps replays the same batches from the same state, bit for bit:
# restoring the same checkpoint again only helps against a fault of the machine, and a third
# time would loop.
SKIP_RESTORES_PER_CHECKPOINT = 2


@dataclasses.dataclass
class StageResult:
  name: str
  knee_step: int
  reason: str
  fired: bool
  params: object  # EMA params of the knee checkpoint, experts stacked, sharded on the mesh


class Run:
  """Everything shared by the stages of one run.

  With load_weights=False nothing is read but headers: the latent params are ShapeDtypeStructs
  that carry their shardings, which is what shape checks and ahead-of-time compilation need,
  and there are no eval batches or train source.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir, load_weights: bool = True,
               devices=None):
    config_check.validate(config, len(jax.devices() if devices is None else devices))
    self.config = config
    self.workdir = storage.path(workdir)
    self.run_dir = run_dir.RunDir(self.workdir)
    self.mesh = sharding.make_mesh(dict(config.mesh), devices)
    self.rules = [tuple(r) for r in config.sharding_rules]
    self.model, self.latent_space = build_model(config, load_latent_params=load_weights)
    # The DC-AE's params are an argument of the jitted steps, replicated on the mesh.
    latent_shapes = self.latent_space.abstract_params()
    self.latent_shardings = jax.tree.map(lambda _: sharding.replicated(self.mesh), latent_shapes)
    self.latent_params = (sharding.put_on_mesh(self.latent_space.params, self.latent_shardings)
                          if load_weights else sharding.abstract_on_mesh(
                              latent_shapes, self.latent_shardings))
    self.pretrained = None  # {'dit/...': array} overlaid on the first stage's fresh params
    if config.train.init_from and load_weights:
      self.pretrained = init_from.pretrained_leaves(config.train.init_from, self.model.dit,
                                                    expert_param_shapes(self.model))
    # The teacher of a first stage that distills (config.distill.teacher), on the mesh; a later
    # distill stage's is the stage before it.
    self.teacher = None
    if load_weights and self.is_distill(self.stage_names()[0]):
      self.teacher = teacher_from_path(self, config.distill.teacher)
    # Tag lists or precomputed arrays -> (cond, cond_mask), as the encoder takes them.
    self.tokenize = make_condition(config.tags, config.model.caption_channels)
    self.eval_batches = self._eval_batches() if load_weights else []
    self.train_source = self._train_source() if load_weights else None
    # A distill stage's batches with the teacher's targets, sampled once (train/distill_targets.py).
    self.distill_source = None
    if load_weights and config.distill.targets:
      self.distill_source = teacher_targets.TeacherTargetSource(config.distill.targets,
                                                                config.diffusion.sampler)
    self.lock = run_lock.NOT_HELD  # `run` puts the run lock here; its check() before writes

  def _eval_batches(self) -> list:
    data = self.config.data
    eval_source = pipeline.make_source(data, "eval", self.config.tags.encoder)
    eval_examples = eval_set.make_eval_examples(eval_source, data, self.tokenize,
                                                align=self.latent_space.factor)
    return list(eval_set.eval_batches(eval_examples, data.eval.batch_size))

  def _train_source(self):
    """The config's images, or with data.hr_latents="precomputed" the stored crops and latents."""
    data = self.config.data
    if data.hr_latents == "encode":
      return pipeline.make_source(data, "train", self.config.tags.encoder)
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

  def jit_train_step(self, name: str, shardings, teacher_shardings=None):
    """Stage `name`'s train step, jitted with the shardings training uses: step(state, batch,
    latent_params) -> (state, metrics), the state donated; a distill stage's takes the
    teacher's params last, placed as `teacher_shardings`."""
    tx, opt_cfg = self.optimizer(name)
    in_shardings = (shardings, sharding.batch_sharding(self.mesh,
                                                       self.rules), self.latent_shardings)
    if self.is_distill(name):
      step = make_distill_step(self.model, self.latent_space, tx, self.config.diffusion,
                               self.config.distill, scale=self.config.data.scale,
                               ema_decay=opt_cfg.ema_decay)
      in_shardings += (teacher_shardings,)
    else:
      step = make_train_step(self.model, self.latent_space, tx, self.config.diffusion,
                             scale=self.config.data.scale,
                             cond_dropout=self.config.tags.dropout_prob,
                             ema_decay=opt_cfg.ema_decay)
    return jax.jit(step, in_shardings=in_shardings,
                   out_shardings=(shardings, sharding.replicated(self.mesh)), donate_argnums=0)

  def is_distill(self, name: str) -> bool:
    return config_check.stage_kind(self.config, name) == "distill"

  def abstract_teacher(self, name: str):
    """The abstract EMA params the distill stage `name` learns from (those of the stage before
    it), for compiling its step without a run."""
    names = self.stage_names()
    if names.index(name) == 0:
      raise UserError(f"stage {name} distills a teacher given by path (config.distill.teacher): "
                      "compile it in a config with the teacher's stage before it")
    return self.abstract_state(names[names.index(name) - 1])[0].ema_params

  def stage_names(self):
    return config_check.stage_names(self.config)


def run(config: ml_collections.ConfigDict, workdir) -> list:
  """Trains every stage of `config.stage_order`; resumes whatever the workdir already holds."""
  workdir = storage.absolute(workdir)
  # Everything that can be wrong with the config, the weights or the data is found here, before
  # the workdir is touched, so a corrected command starts clean.
  the_run = Run(config, workdir)
  run_fit.check(the_run)  # reads only: a config that does not fit leaves the workdir as it was
  if not storage.is_url(workdir):  # object storage has no folders: there the lock is the first
    _make_workdir(workdir)  # write, and says what is wrong with the bucket
  with run_lock.holding(workdir, lead=jax.process_index() == 0,
                        heartbeat_seconds=config.train.lock_heartbeat_seconds,
                        stale_seconds=config.train.lock_stale_seconds) as the_run.lock:
    run_fit.check(the_run)  # again: the run that held the lock may have written since
    if jax.process_index() == 0:
      run_dir.remove_stale_temporaries(workdir)
    return _train_stages(the_run, config)


def _make_workdir(workdir):
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except FileExistsError:
    raise UserError(f"--workdir {workdir} is a file, not a directory") from None
  except OSError as e:
    raise UserError(f"--workdir {workdir} cannot be created: {e.strerror}") from e


def _train_stages(the_run: Run, config) -> list:
  lead = jax.process_index() == 0
  if lead:
    run_config.write(the_run.run_dir, config)
  results, previous = [], None
  for index, name in enumerate(the_run.stage_names()):
    previous = train_stage(the_run, name, index, previous)
    results.append(previous)
    kill_points.reached("run_json")
    if lead:
      run_dir.write_json(
          the_run.run_dir.run_json, {
              "stages":
                  [{"name": r.name, "knee_step": r.knee_step, "fired": r.fired, "reason": r.reason}
                   for r in results]
          })
  return results


def train_stage(the_run: Run, name: str, index: int, previous) -> StageResult:
  """Trains one stage to its knee (or budget) and returns the knee checkpoint's EMA params,
  still sharded on the mesh. A stage that already ended (a resumed run) hands over its knee."""
  done = the_run.run_dir.stage(name).result()
  if done is not None:
    return _Stage(the_run, name).reuse(done)
  stage = _StageTraining(the_run, name, index, previous)
  step, decision = stage.train()
  return stage.finish(step, decision)


class _Stage:
  """One stage: its directory, checkpoints, knee snapshots and knee detector; what a stage that
  already ended hands over (`reuse`)."""

  def __init__(self, the_run: Run, name: str):
    self.run, self.name = the_run, name
    self.cfg = the_run.config.stages[name]
    self.dir = the_run.run_dir.stage(name)
    self.dir.path.mkdir(parents=True, exist_ok=True)
    self.is_lead = jax.process_index() == 0
    self.tx, _ = the_run.optimizer(name)
    self.abstract, self.shardings = the_run.abstract_state(name)
    self.detector = esgf.KneeDetector(the_run.config.esgf, num_experts=self.cfg.num_experts)
    train_cfg = the_run.config.train
    self.ckpts = StageCheckpoints(self.dir.checkpoints, keep_latest=train_cfg.keep_latest,
                                  best_metric=train_cfg.best_metric, best_mode=train_cfg.best_mode)
    # Written whole before the checkpoint of the same evaluation, which a resume starts after.
    self.snapshots = KneeSnapshots(self.dir.knee_snapshots, async_save=False)

  def reuse(self, done: dict) -> StageResult:
    knee_step, reason, knee_params = self._restore_knee(done["knee_step"], done["reason"])
    self.ckpts.close()
    if knee_step != done["knee_step"] and self.is_lead:
      run_dir.write_json(self.dir.result_json, dict(done, knee_step=knee_step, reason=reason))
    self._keep_knee_snapshot_only(knee_step)
    return StageResult(self.name, knee_step, reason, done["fired"], knee_params)

  def _keep_knee_snapshot_only(self, knee_step: int):
    """Once result.json names the knee for good, the other steps' snapshots go (a kill before
    leaves them for the next start to drop)."""
    self.snapshots.keep_only({knee_step})
    self.snapshots.close()

  def _restore_knee(self, knee_step: int, reason: str) -> tuple:
    """(step, reason, EMA params) of the knee: its snapshot, else its checkpoint; where neither
    reads back intact, the nearest intact checkpoint's, the reason saying why."""
    snapshot_problem = "it has no EMA snapshot"
    if knee_step in self.snapshots.steps():
      try:
        return knee_step, reason, self.snapshots.restore(knee_step, self.abstract.ema_params)
      except UnreadableSnapshot as e:
        snapshot_problem = str(e)
        log.warning("stage %s: knee %d: %s; trying its checkpoint", self.name, knee_step, e)
    kept = self.ckpts.all_steps()
    nearest = sorted(kept, key=lambda s: (abs(s - knee_step), s))
    step, state, _ = self.ckpts.restore_intact(nearest, self.abstract)
    if step != knee_step:
      cause = (f"its checkpoint {knee_step} was damaged" if knee_step in kept else
               f"step {knee_step} cannot be branched from: {snapshot_problem} and its "
               "checkpoint was not kept")
      reason = f"{reason}; {cause}, so the nearest intact one, {step}, was used"
    return step, reason, state.ema_params


class _StageTraining(_Stage):
  """A stage being trained: the train state while it runs, from the stage's origin or its
  latest checkpoint, with the data iterator, metrics log, detector, validator and writer that go
  with it, all set up here."""

  def __init__(self, the_run: Run, name: str, index: int, previous):
    super().__init__(the_run, name)
    config = self.run.config
    # A distill stage's frozen teacher, an argument of every step: the knee the stage before it
    # hands over, or the run's (config.distill.teacher) for a first stage.
    self.teacher = None
    if the_run.is_distill(name):
      self.teacher = previous.params if previous is not None else the_run.teacher
    self.state, self.shardings, start_params, origin = _start(self.run, index, previous, self.tx,
                                                              self.cfg.num_experts, self.shardings,
                                                              self.teacher)
    if self.is_lead and not self.dir.stage_json.exists():
      run_dir.write_json(
          self.dir.stage_json,
          {"name": self.name, "num_experts": self.cfg.num_experts, "init_from": origin})
      log.info("stage %s: %s parameters in %d expert(s)", self.name,
               f"{parameter_overview.count_parameters(self.state.params):,}", self.cfg.num_experts)
    data_cfg = stage_data_config(config, index)
    source = self.run.train_source
    if self.teacher is not None and self.run.distill_source is not None:
      source = self.run.distill_source
    self.data_iter = iter(pipeline.make_train_dataset(source, data_cfg, self.run.tokenize))
    self.resumed_from = None
    if not self.ckpts.all_steps():
      self._check_nothing_lost()
    if self.ckpts.all_steps():
      del self.state  # free its buffers before the restore allocates the same again
      self.resumed_from, self.state, _ = self.ckpts.restore_intact(self.ckpts.all_steps()[::-1],
                                                                   self.abstract, self.data_iter)
      log.info("stage %s: resumed from checkpoint %d", self.name, self.resumed_from)
    # The evaluations after the resumed checkpoint are made again, snapshots included.
    self.snapshots.keep_only(range(-1 if self.resumed_from is None else self.resumed_from + 1))
    self.mlog = run_dir.metrics_log(self.dir.metrics_jsonl, self.resumed_from, write=self.is_lead)
    self.first_stage = index == 0
    for row in self.mlog.evaluations():
      if esgf.judged(row["step"], self.first_stage):
        self.detector.update(row["step"], row)
    # A student is scored as it samples: one step, no guidance.
    sampler = (distill.STUDENT_SAMPLER
               if self.teacher is not None else {"steps": config.train.eval_steps})
    self.validator = Validator(self.run.model, self.run.latent_space, self.run.latent_params,
                               config.diffusion, self.run.eval_batches, scale=config.data.scale,
                               sampler=sampler, seed=config.seed)
    self.bicubic = self.validator.bicubic()
    self.expert_losses = ExpertFlowLosses(self.run.model, self.run.latent_space,
                                          self.run.latent_params, config.diffusion,
                                          self.run.eval_batches, num_experts=self.cfg.num_experts,
                                          scale=config.data.scale, seed=config.seed)
    self.writer = Summaries(self.dir.path if self.is_lead else None)
    self.guard = DivergenceGuard(config.train.guard, start_params)
    self.rolled_back = False  # since the last save
    self.skip_restores = collections.Counter()  # checkpoint step -> restores after skips

  def _check_nothing_lost(self):
    """A stage about to start from step 0 with work on record (set-aside checkpoints,
    evaluations past step 0) stops in one line, unless train.restart_stage names it: an
    auto-restarting scheduler would otherwise wipe a run that lost its checkpoints unseen."""
    found = []
    aside = self.dir.damaged_checkpoints
    if aside.is_dir() and any(aside.iterdir()):
      found.append(f"set-aside checkpoints in {aside}")
    rows = run_dir.read_jsonl(self.dir.metrics_jsonl)[0]
    # A checkpoint follows each evaluation; train rows before the second evaluation are what a
    # start killed before checkpoint 0 was written leaves, and cost nothing to train again.
    last = max((r.get("step", 0) for r in rows if run_dir.is_evaluation(r)), default=0)
    if last > 0:
      found.append(f"evaluations up to step {last} in {self.dir.metrics_jsonl}")
    found = lead_decides.broadcast(found)  # every host starts over, or none
    if not found or self.run.config.train.restart_stage == self.name:
      return
    self.ckpts.close()
    raise UserError(f"stage {self.name} has no checkpoint to resume from, but "
                    f"{' and '.join(found)}: to start it over from step 0 on purpose, pass "
                    f"--config.train.restart_stage={self.name}")

  def evaluate_and_save(self, step: int):
    """Validation metrics of the state's EMA params, logged and checkpointed with the state;
    returns (the detector's decision, the metrics)."""
    val, sr = self.validator(self.state.ema_params)
    val.update(self.expert_losses(self.state.ema_params))
    row = {"step": step, **val, **self.bicubic, "train/lr_scale": float(self.state.lr_scale)}
    self.run.lock.check()
    self.mlog.append(row)
    self.writer.write_scalars(step, {k: v for k, v in row.items() if k != "step"})
    self.writer.write_images(step, {"val/lr_bicubic_sr_hr": self.validator.image_grid(sr)})
    decision = (
        self.detector.update(step, val)  # first: its keep-sets prune these saves
        if esgf.judged(step, self.first_stage) else self.detector.decision)
    if step in decision.branch_steps:  # the params just evaluated, before any rollback
      self.snapshots.save(step, self.state.ema_params, keep=decision.branch_steps)
    if self.guard.collapsed(val):  # before the save: a resume starts from the rolled-back state
      self._roll_back(step, PSNR, f"validation PSNR collapsed to {val[PSNR]:.2f} dB")
    self._save(step, val, decision)
    log.info("stage %s step %d: %s", self.name, step,
             ", ".join(f"{k}={v:.4f}" for k, v in val.items()))
    return decision, val

  def _save(self, step: int, val: dict, decision):
    self.mlog.flush()
    self.ckpts.save(step, self.state, self.data_iter, val, keep=decision.keep_steps)
    if self.rolled_back:  # written before training goes on, as the rollback's row is
      self.ckpts.wait()
      self.rolled_back = False
      kill_points.reached("rolled_back")

  def train(self):
    """Steps until ESGF fires (where the stage may end there) or the budget is spent; returns
    (the last step, the detector's decision)."""
    train_cfg, max_steps = self.run.config.train, self.cfg.max_steps
    teacher = () if self.teacher is None else (self.teacher,)
    step_fn = self.run.jit_train_step(self.name, self.shardings,
                                      jax.tree.map(lambda x: x.sharding, self.teacher))
    report = Progress(self.name, max_steps, self.writer)
    step, decision = int(self.state.step), self.detector.decision
    # Every evaluation and save under the one mesh context: one outside it would trace (and
    # compile) the sampler, the metrics and the checksums again for the first one inside.
    with jax.set_mesh(self.run.mesh), nn.logical_axis_rules(self.run.rules):
      if self.resumed_from is None:
        decision, first = self.evaluate_and_save(0)
        self.guard.start(first)
      else:
        self.guard.resume(self.mlog.rows)
      while step < max_steps and not (self.cfg.esgf and decision.fired):
        self.run.lock.check()  # a run that lost its lock stops before it writes on
        batch = pipeline.make_global_batch(next(self.data_iter), self.run.mesh, self.run.rules)
        self.state, metrics = step_fn(self.state, batch, self.run.latent_params, *teacher)
        step += 1
        report(step)
        if step % train_cfg.log_every == 0:
          self._log_train_metrics(step, metrics)
        if int(self.state.consecutive_skips) >= train_cfg.max_consecutive_skips:
          step = self._restore_after_skips(step)
          continue
        if step % train_cfg.eval_every == 0 or step == max_steps:
          decision, val = self.evaluate_and_save(step)
        elif self.rolled_back:  # on the loss: checkpointed now, as an evaluation would
          self._save(step, {}, decision)
    self.ckpts.wait()
    return step, decision

  def _log_train_metrics(self, step: int, metrics):
    scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
    self.writer.write_scalars(step, scalars)
    self.mlog.append({"step": step, **scalars})
    if self.guard.exploded(scalars[LOSS]):
      self._roll_back(step, LOSS, f"training loss exploded to {scalars[LOSS]:.4g}")

  def _roll_back(self, step: int, trigger: str, why: str):
    self.state, row = self.guard.roll_back(self.state, self.tx, self.shardings, self.name, step,
                                           trigger, why)
    self.mlog.append(row)
    self.rolled_back = True

  def _restore_after_skips(self, step: int) -> int:
    """Too many non-finite steps in a row: back to the latest intact checkpoint; returns its
    step."""
    limit = self.run.config.train.max_consecutive_skips
    if not self.ckpts.all_steps():
      raise UserError(f"stage {self.name}: {limit} consecutive non-finite steps before the "
                      "first checkpoint")
    skips, latest = int(self.state.consecutive_skips), self.ckpts.all_steps()[-1]
    if self.skip_restores[latest] == SKIP_RESTORES_PER_CHECKPOINT:
      self.ckpts.close()
      raise UserError(f"stage {self.name}: {limit} consecutive non-finite steps at step {step}, "
                      f"again after restoring checkpoint {latest} {self.skip_restores[latest]} "
                      "times: its batches replay the same way (lower the learning rate, or "
                      "check the data)")
    self.skip_restores[latest] += 1
    del self.state
    good, self.state, _ = self.ckpts.restore_intact(self.ckpts.all_steps()[::-1], self.abstract,
                                                    self.data_iter)
    log.warning("stage %s: %d consecutive non-finite steps at step %d; restoring checkpoint %d",
                self.name, skips, step, good)
    return int(self.state.step)

  def _budget_branch(self, decision) -> tuple:
    """(step, reason) to branch from when the budget ended the stage: see esgf.budget_branch;
    the latest checkpoint only while there are too few evaluations to judge."""
    chosen, why = esgf.budget_branch(decision, self.run.config.esgf)
    if chosen is None:
      chosen, why = self.ckpts.latest_step(), f"the latest checkpoint: {why}"
    return chosen, (f"step budget {self.cfg.max_steps} reached; branching from step {chosen}, "
                    f"{why} ({decision.reason})")

  def finish(self, step: int, decision) -> StageResult:
    """Restores the knee (ESGF's, or when the budget ended the stage, its candidate or best
    checkpoint), writes the knee plot and result.json, and hands the knee's EMA params on."""
    del self.state, self.guard, self.teacher  # only the knee's EMA params go on
    if self.cfg.esgf and decision.fired:
      knee_step, reason, fired = decision.knee_step, decision.reason, True
    else:
      (knee_step, reason), fired = self._budget_branch(decision), False
    chosen = knee_step
    knee_step, reason, knee_params = self._restore_knee(knee_step, reason)
    self.ckpts.close()
    kill_points.reached("knee_restored")
    if self.is_lead:
      records = [(r["step"], r) for r in self.mlog.evaluations()]
      ending = f"ESGF knee at step {knee_step}" if fired else f"step budget {self.cfg.max_steps}"
      plot = esgf.plot_curves(records, decision, self.run.config.esgf, self.dir.knee_png,
                              title=f"stage {self.name}: {ending}")
      self.writer.write_images(step, {"esgf/knee_plot": read_image(plot)[None]})
      run_dir.write_json(
          self.dir.result_json, {
              "knee_step": knee_step, "reason": reason, "fired": fired, "final_step": step,
              "chosen_step": chosen
          })
    self._keep_knee_snapshot_only(knee_step)
    kill_points.reached("stage_ended")
    self.writer.flush()
    log.info("stage %s ends at step %d; next stage starts from step %d (%s)", self.name, step,
             knee_step, reason)
    return StageResult(self.name, knee_step, reason, fired, knee_params)


def stage_data_config(config, index: int) -> ml_collections.ConfigDict:
  """The data section the `index`-th stage's batches are drawn with: each stage sees its own
  crop order."""
  data_cfg = ml_collections.ConfigDict(config.data.to_dict())
  data_cfg.seed = config.data.seed + index
  return data_cfg


def stage_rng(config, index: int):
  """The key the `index`-th stage's train state is made from (state.split_rng)."""
  return jax.random.PRNGKey(config.seed + 1000 * index)


def _start(the_run: Run, index: int, previous, tx, num_experts, shardings, teacher=None):
  """(state, shardings, start params for the guard or None, where the stage starts from). A
  distill stage's student starts as its teacher's σ = 1 expert (diffusion/distill.py)."""
  config = the_run.config
  rng = stage_rng(config, index)
  if teacher is not None:
    start = jax.jit(lambda t: distill.student_start(t, config.diffusion.experts),
                    out_shardings=shardings.params)(teacher)
    state, shardings = create_train_state(the_run.model, tx, num_experts, rng, the_run.mesh,
                                          the_run.rules, start)
    expert = distill.source_expert(config.diffusion.experts, jax.tree.leaves(teacher)[0].shape[0])
    origin = ({"stage": None, "teacher": config.distill.teacher}
              if previous is None else _previous_origin(the_run, previous))
    return state, shardings, start, dict(origin, student_from_expert=expert)
  if previous is not None:
    start = branch_params(previous.params, num_experts, shardings.params)
    state, shardings = create_train_state(the_run.model, tx, num_experts, rng, the_run.mesh,
                                          the_run.rules, start)
    origin = dict(
        _previous_origin(the_run, previous), experts_initialised_identically=num_experts > 1 and
        jax.tree.leaves(previous.params)[0].shape[0] == 1)
    return state, shardings, start, origin
  state, shardings = create_train_state(the_run.model, tx, num_experts, rng, the_run.mesh,
                                        the_run.rules)
  if the_run.pretrained is None:
    return state, shardings, None, {"stage": None}
  state = state.replace(
      params=overlay_params(state.params, the_run.pretrained, shardings.params),
      ema_params=overlay_params(state.ema_params, the_run.pretrained, shardings.ema_params))
  return state, shardings, None, {
      "stage": None, "init_from": config.train.init_from,
      "pretrained_tensors": len(the_run.pretrained)
  }


def _previous_origin(the_run: Run, previous) -> dict:
  """stage.json's record of the knee a stage starts from."""
  return {
      "stage": previous.name, "knee_step": previous.knee_step,
      "checkpoint": str(the_run.run_dir.stage(previous.name).ema_params_dir(previous.knee_step))
  }
