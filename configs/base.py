"""Sections shared by every config; size-specific files override the model and the budget."""

import dataclasses

import ml_collections

from linearsr_jax import esgf, optimizer
from linearsr_jax.data import pipeline
from linearsr_jax.diffusion import flow
from linearsr_jax.models import latent_space, tags
from linearsr_jax.models.dit import DiTConfig
from linearsr_jax.sharding import DEFAULT_RULES


def model_config(**fields) -> ml_collections.ConfigDict:
  """The `model` section: the fields of linearsr_jax.models.dit.DiTConfig, its defaults where
  `fields` names none (a field it does not have is refused there, DiTConfig.from_dict)."""
  cfg = ml_collections.ConfigDict(dataclasses.asdict(DiTConfig.from_dict(fields)))
  # qk_norm is None or a string; declare the type so `--config.model.qk_norm=...` works.
  cfg.qk_norm = ml_collections.FieldReference(fields.get("qk_norm"), field_type=str)
  return cfg


def stage_config(num_experts: int, max_steps: int, esgf: bool = True, kind: str = "flow",
                 **optimizer):
  """One training stage: its experts, step budget, whether ESGF may end it, its kind ('flow':
  flow matching; 'distill': a one-step student of the stage before it, see config.distill) and
  optimizer overrides on top of config.optimizer."""
  return ml_collections.ConfigDict(
      dict(num_experts=num_experts, max_steps=max_steps, esgf=esgf, kind=kind,
           optimizer=ml_collections.ConfigDict(optimizer)))


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Mesh axis sizes; -1 takes the remaining devices. Logical rules map model axis names to them.
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "expert": 1})
  config.sharding_rules = [list(rule) for rule in DEFAULT_RULES]
  config.latent = latent_space.default_config()
  config.data = pipeline.default_config()
  config.diffusion = flow.default_config()
  config.tags = tags.default_config()
  config.tags.max_tokens = 8
  config.optimizer = optimizer.default_config()
  config.esgf = esgf.default_config()
  config.esgf.metrics = "val/psnr_y:max,val/lpips_alex:min"
  config.train = ml_collections.ConfigDict(
      dict(
          # A params dir from `linearsr import diffusers` (a SANA transformer): the first stage
          # starts from its DiT weights (see linearsr_jax/train/init_from.py).
          init_from="",
          eval_every=500,  # steps between validations (and checkpoints)
          eval_steps=4,  # sampler steps for validation
          log_every=50,
          keep_latest=3,  # plus the best by best_metric, plus ESGF's candidates
          best_metric="val/lpips_alex",
          best_mode="min",
          max_consecutive_skips=5,  # non-finite steps in a row before restoring a checkpoint
          # The run lock (train/run_lock.py): its heartbeat's period, and the age past which a
          # heartbeat means a stopped run (a host gone, not a slow one) whose lock is taken over.
          lock_heartbeat_seconds=30.0,
          lock_stale_seconds=600.0,
          # A stage with no intact checkpoint left but with work on record (set-aside steps,
          # metrics past step 0) stops rather than start over; naming it here starts it over.
          restart_stage="",
          guard=ml_collections.ConfigDict(
              dict(enabled=True, psnr_drop_db=3.0, loss_factor=10.0, lr_factor=0.5,
                   max_rollbacks=2)),
      ))
  # A distill stage's teacher and loss (train/distill_step.py). The teacher samples with
  # config.diffusion.sampler (solver, steps, shift, guidance scale).
  config.distill = ml_collections.ConfigDict(
      dict(
          # A step directory (a checkpoint or knee snapshot) of a run of this same model: the
          # teacher of a distill stage that comes first in stage_order. Otherwise the teacher is
          # the knee of the stage before it.
          teacher="",
          # A directory of the teacher's targets sampled once (train/distill_targets.py), read
          # instead of sampling the teacher in every step; "": sampled in every step.
          targets="",
          gt_weight=0.0,  # + w·‖student − HR latent‖²
          perceptual_weight=0.0,  # + w·LPIPS(decoded student, HR)
      ))
  # pretrain -> 4 SNR experts branched from its knee -> fine-tuning from the experts' knee;
  # `distill` (not in the default order) makes a one-step student of the stage before it.
  config.stage_order = "pretrain,moe,finetune"
  config.stages = ml_collections.ConfigDict(
      dict(
          pretrain=stage_config(1, 200_000),
          moe=stage_config(4, 100_000),
          finetune=stage_config(4, 50_000, learning_rate=2e-5),
          distill=stage_config(1, 20_000, kind="distill", learning_rate=2e-5),
      ))
  return config
