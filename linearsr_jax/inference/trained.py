"""Loading a trained model for the tools: a run workdir, a stage, or one checkpoint step.

    trained = load_trained("runs/demo")                      # last stage, its knee checkpoint
    trained = load_trained("runs/demo", stage="pretrain", step=400, ema=False)
    trained = load_trained("runs/demo/moe/checkpoints/350")  # one step directory
    trained = load_trained("runs/demo/pretrain/knee_snapshots/300")  # the knee's EMA params
    trained = load_trained("runs/big", sharded_on=mesh)  # FSDP over the mesh (param_placement)

The run's resolved config.json rebuilds the model, latent space and sampler settings (a distill
stage's student: one step, no guidance); the params are restored from Orbax without needing the
training state's structure in advance (run/checkpoint_read.py); the EMA params of a step come
from its knee snapshot when it has one (train/knee_snapshots.py), else from its checkpoint.
"""

import dataclasses

import jax
import ml_collections

from linearsr_jax import config_check, run_config, storage
from linearsr_jax.diffusion import distill
from linearsr_jax.errors import UserError
from linearsr_jax.inference import param_placement
from linearsr_jax.models.build import build_model
from linearsr_jax.models.dit import DTYPES
from linearsr_jax.models.sr_model import SRModel
from linearsr_jax.run import checkpoint_read
from linearsr_jax.run.run_dir import RunDir, StageDir, step_location


@dataclasses.dataclass
class Trained:
  config: ml_collections.ConfigDict
  stage: str
  step: int
  model: SRModel
  params: dict  # experts stacked on the leading axis
  latent_space: object
  # The run's, the experts' number the params'; a distill stage's student samples as it was
  # trained, one step without guidance (diffusion/distill.py), whatever the teacher's settings.
  diffusion: ml_collections.ConfigDict

  @property
  def num_experts(self) -> int:
    return jax.tree.leaves(self.params)[0].shape[0]

  def computing_in(self, dtype: str | None) -> "Trained":
    """This model computing in `dtype` (models/dit.py DTYPES; None: the run's model.dtype). The
    params stay float32, and so do the norms, the linear attention's normaliser and the softmax
    (models/layers.py, attention.py): only the matmuls and convolutions change."""
    if dtype is None or dtype == self.model.dit.dtype:
      return self
    if dtype not in DTYPES:
      raise UserError(f"--dtype {dtype}: choose from {', '.join(DTYPES)}")
    model = self.model.clone(dit=dataclasses.replace(self.model.dit, dtype=dtype))
    return dataclasses.replace(self, model=model)


def _resolve(path, stage, step):
  """(run dir, stage name, step) from any of: run dir, stage dir, step dir."""
  if (path / "_CHECKPOINT_METADATA").exists() or (path / "state").is_dir():
    return step_location(path)
  if StageDir(path).stage_json.exists():
    return _resolve_stage(RunDir(path.parent), path.name, step)
  run = RunDir(path)
  if run.is_run():
    if stage is None:
      names = config_check.stage_names(run_config.read(run))
      done = [n for n in names if run.stage(n).checkpoints.is_dir()]
      if not done:
        raise UserError(f"{path}: the run has no checkpoints yet")
      stage = done[-1]
    return _resolve_stage(run, stage, step)
  raise UserError(f"{path}: not a linearsr run, stage or checkpoint directory")


def _resolve_stage(run: RunDir, stage: str, step):
  stage_dir = run.stage(stage)
  if not stage_dir.checkpoints.is_dir():
    raise UserError(f"{stage_dir.path}: no checkpoints (stages: "
                    f"{', '.join(s.name for s in run.stages())})")
  if step is None:
    result = stage_dir.result()
    if result is not None:
      step = result["knee_step"]
    elif stage_dir.checkpoint_steps():
      step = stage_dir.checkpoint_steps()[-1]
    else:
      raise UserError(f"{stage_dir.path}: no finished checkpoint")
  return run, stage, int(step)


def _step_dir(stage_dir: StageDir, step: int, ema: bool):
  """The step directory holding `step`'s params: for the EMA params its knee snapshot or its
  checkpoint (run_dir.StageDir.ema_params_dir), for the raw params its checkpoint alone."""
  step_dir = stage_dir.ema_params_dir(step) if ema else stage_dir.checkpoint(step)
  if step_dir is not None and (step_dir / "state").is_dir():
    return step_dir
  if not ema and step in stage_dir.snapshot_steps():
    raise UserError(f"{stage_dir.checkpoint(step)}: no such checkpoint; only the EMA params "
                    f"of step {step} were kept (a knee snapshot), so --raw cannot read it")
  raise UserError(f"{stage_dir.checkpoint(step)}: no such checkpoint")


def load_trained(path, stage=None, step=None, ema: bool = True, sharded_on=None) -> Trained:
  """`sharded_on`: a mesh (param_placement.upscale_mesh) the params are restored onto already
  FSDP-sharded, never whole on one device; None: on the first local device."""
  path = storage.absolute(path)
  if not path.exists():
    raise UserError(f"{path}: no such checkpoint or run directory")
  run, stage, step = _resolve(path, stage, step)
  step_dir = _step_dir(run.stage(stage), step, ema)
  config = run_config.read(run)
  if config is None:
    raise UserError(f"{run.path}: no config.json, so the model cannot be rebuilt")
  model, latent_space = build_model(config)

  def fsdp(shapes):  # the number of experts is the checkpoint's
    return param_placement.fsdp_shardings(model, jax.tree.leaves(shapes)[0].shape[0], sharded_on)

  params = checkpoint_read.read_params(step_dir, "ema_params" if ema else "params",
                                       None if sharded_on is None else fsdp)
  diffusion = ml_collections.ConfigDict(config.diffusion.to_dict())
  if config_check.stage_kind(config, stage) == "distill":
    diffusion.sampler.update(distill.STUDENT_SAMPLER)
  return Trained(config, stage, step, model, params, latent_space, diffusion)
