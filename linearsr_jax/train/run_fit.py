"""Whether a config fits the run already in its workdir, decided before `linearsr train` writes
anything there: one that does not is one line, and the workdir stays byte for byte as it was
(config.json, the run's recipe, included).

A config fits the run when
- each stage that has started (a stage.json) is in its stage order, right after the stage it
  branched from (first when it started without one), with the experts it started with;
- each started stage's latest readable checkpoint holds the arrays of this model and that
  stage's optimizer, shape for shape (checkpoint.structure_mismatch);
- the fields that say what the params compute (MODEL_FIELDS) are the run's config.json's;
- once a distill stage has started, the fields that make its teacher's targets (TEACHER_FIELDS)
  are the run's config.json's.
Anything else (budgets, learning rates, evaluation, ESGF, data loading) may change on resume.
"""

from linearsr_jax import config_check, run_config, storage_errors
from linearsr_jax.errors import UserError
from linearsr_jax.run import run_dir
from linearsr_jax.train import checkpoint

# What the trained params compute, beyond their shapes: the fields the tools rebuild the model
# and its sampler's flow from. Not among them (FREE_FIELDS): how the model is computed, where
# the DC-AE's params lie (a path, which moves with the data). The experts' number is no config
# field of the model: each stage sets its own, in stage.json and in the checkpoints' shapes.
MODEL_FIELDS = ("model", "latent", "diffusion.source", "diffusion.lr_source_noise",
                "diffusion.timestep_scale", "diffusion.experts", "tags.encoder", "tags.vocab_size",
                "tags.max_tokens", "data.scale")
FREE_FIELDS = ("model.remat", "model.dtype", "model.depthwise", "latent.dcae_params")
# What a distill stage's student learns to reproduce: the teacher's sampler and the loss. Changed
# on resume, the steps after it would regress onto other targets than the steps before.
TEACHER_FIELDS = ("diffusion.sampler", "distill")


def check(the_run):
  """Raises UserError when `the_run`'s config (a train.loop.Run) does not fit the run in its
  workdir; reads only."""
  run, config = the_run.run_dir, the_run.config
  if not run.is_run():  # no config.json: no stage either, as a run writes it first
    return
  order = the_run.stage_names()
  for stage in run.stages():
    _check_started_stage(stage, order, config, run)
  for name in order:
    _check_checkpoints(run.stage(name), lambda: the_run.abstract_state(name)[0])
  stored = config_check.flatten(run_config.read(run))
  new = config_check.flatten(run_config.resolved(config))
  _check_fields(stored, new, MODEL_FIELDS, "trained with", run)
  for stage in run.stages():
    if config_check.stage_kind(config, stage.name) == "distill":
      _check_fields(stored, new, TEACHER_FIELDS, f"whose distill stage {stage.name!r} started with",
                    run)


def _is_under(path: str, fields) -> bool:
  return any(path == f or path.startswith(f + ".") for f in fields)


def _check_fields(stored: dict, new: dict, fields, started_with: str, run):
  """A field the stored config lacks (written by an older version) is not compared."""
  for path in sorted(stored.keys() & new.keys()):
    if _is_under(path, fields) and not _is_under(path, FREE_FIELDS) and stored[path] != new[path]:
      raise UserError(f"config.{path}={new[path]!r} does not fit the run in {run.path}, "
                      f"{started_with} {stored[path]!r} (its config.json): resume with that "
                      "value, or train into another --workdir")


def _check_started_stage(stage, order: list, config, run):
  try:
    started = run_dir.read_json(stage.stage_json)
  except (ValueError, UnicodeDecodeError):
    raise UserError(f"{stage.stage_json}: unreadable (not JSON)") from None
  origin = (started.get("init_from") or {}).get("stage")
  where = (f"the run in {run.path} has started stage {stage.name!r}" +
           (f" from stage {origin!r}" if origin else " first"))
  if stage.name not in order:
    raise UserError(f"{where}, but config.stage_order={config.stage_order!r} leaves it out: "
                    "resume with the run's stage order, or train into another --workdir")
  index = order.index(stage.name)
  if origin != (order[index - 1] if index else None):
    raise UserError(f"{where}, but config.stage_order={config.stage_order!r} puts it " +
                    (f"after {order[index - 1]!r}" if index else "first") +
                    ": resume with the run's stage order, or train into another --workdir")
  experts = config.stages[stage.name].num_experts
  if started.get("num_experts", experts) != experts:
    raise UserError(f"{where} with num_experts={started['num_experts']}, but "
                    f"config.stages.{stage.name}.num_experts={experts}: resume with the run's, "
                    "or train into another --workdir")


def _check_checkpoints(stage, abstract_state):
  """The latest checkpoint whose metadata reads; every checkpoint of a stage holds the same
  arrays. `abstract_state()`: the stage's, built only when it has checkpoints."""
  steps = stage.checkpoint_steps()
  wanted = abstract_state() if steps else None
  for step in reversed(steps):
    try:  # a storage error is retried (then one line): a skipped check would let a misfit in
      detail = storage_errors.retried(
          lambda step=step: checkpoint.structure_mismatch(stage.checkpoint(step), wanted),
          f"checkpoint {stage.checkpoint(step)}")
    except UserError:
      raise
    except Exception:  # damage: the restore reads it again, and says what is wrong with it
      continue
    if detail is not None:
      raise checkpoint.not_this_model(stage.checkpoint(step), detail)
    return
