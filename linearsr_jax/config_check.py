"""One check of a whole resolved config, at load, as MaxText's pyconfig does: every choice,
range and cross-field rule the run relies on fails here, as one UserError line naming the
field, its value and what is allowed, not hours later in a data worker or a jitted step.

The CLIs call `validate(config)` where they parse the config; `train.loop.Run` calls it again
with the number of devices, once JAX knows them (mesh and batch against the devices).
Checks the modules own stay there and are called from here (flow.check_config,
esgf.validate_config, experts.check_num_experts, make_latent_space, lr_stem_depth).
"""

import dataclasses
import math
import re

import ml_collections

from linearsr_jax import esgf, optimizer, sharding
from linearsr_jax.data import degradations, pipeline, tag_sources
from linearsr_jax.diffusion import experts, flow, samplers
from linearsr_jax.errors import UserError
from linearsr_jax.models import attention, dit, layers, tags
from linearsr_jax.models.latent_space import lr_stem_depth, make_latent_space
from linearsr_jax.run import metric_keys


@dataclasses.dataclass(frozen=True)
class _Range:
  low: float
  high: float = math.inf
  low_open: bool = False
  high_open: bool = False

  def holds(self, value) -> bool:
    above = value > self.low if self.low_open else value >= self.low
    below = value < self.high if self.high_open else value <= self.high
    return above and below

  def __str__(self):
    if self.high == math.inf:
      return f"{'>' if self.low_open else '>='} {self.low:g}"
    return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
            f"{')' if self.high_open else ']'}")


AT_LEAST_1, NON_NEGATIVE = _Range(1), _Range(0)
POSITIVE = _Range(0, low_open=True)
PROBABILITY = _Range(0, 1)  # also every field whose name ends in _prob
DECAY = _Range(0, 1, high_open=True)

# Keys as in the config; a stage's optimizer override is checked as the optimizer field it
# overrides, other stage fields as stages.*.<field> (see _rule_key).
CHOICES = {
    "tags.encoder": tags.ENCODERS,
    "data.source.kind": pipeline.SOURCE_KINDS,
    "data.eval_source.kind": pipeline.SOURCE_KINDS,
    "data.tags.kind": tag_sources.TAG_SOURCE_KINDS,
    "data.hr_latents": pipeline.HR_LATENTS,
    "data.degradation.mode": degradations.DEGRADATION_MODES,
    "data.degradation.resize_modes": degradations.RESIZE_MODES,  # each of them
    "diffusion.sampler.solver": samplers.SOLVERS,
    "optimizer.name": optimizer.NAMES,
    "optimizer.schedule": optimizer.SCHEDULES,
    "model.attention": tuple(attention.ATTENTION_KERNELS),
    "model.qk_norm": attention.QK_NORMS,
    "model.remat": tuple(dit.REMAT_POLICIES),
    "model.dtype": dit.DTYPES,
    "model.depthwise": layers.DEPTHWISE,
    "train.best_mode": esgf.DIRECTIONS,
    "train.best_metric": metric_keys.METRIC_KEYS,
    "stages.*.kind": ("flow", "distill"),
}
# The names wrap as lists here; yapf would put each list on one line of 500 columns.
# yapf: disable
RANGES = {
    **dict.fromkeys(["data.scale", "data.crop_size", "data.batch_size", "data.eval.batch_size",
                     "data.read_threads", "data.prefetch_batches", "data.worker_buffer_size",
                     "tags.vocab_size", "tags.max_tokens", "model.depth", "model.hidden",
                     "model.heads", "model.cross_heads", "model.cross_head_dim",
                     "model.caption_channels", "model.latent_channels", "model.patch_size",
                     "model.lr_stem_width", "diffusion.sampler.steps", "train.eval_every",
                     "train.eval_steps", "train.log_every", "train.keep_latest",
                     "train.max_consecutive_skips", "stages.*.max_steps"], AT_LEAST_1),
    **dict.fromkeys(["data.eval.crop_size", "data.num_workers", "model.lr_channels",
                     "model.lr_stem_convs", "diffusion.lr_source_noise",
                     "optimizer.warmup_steps", "optimizer.weight_decay", "optimizer.grad_clip",
                     "train.guard.max_rollbacks", "distill.gt_weight",
                     "distill.perceptual_weight"], NON_NEGATIVE),
    **dict.fromkeys(["model.mlp_ratio", "diffusion.timestep_scale", "diffusion.sampler.shift",
                     "optimizer.learning_rate", "optimizer.eps", "train.guard.psnr_drop_db",
                     "train.lock_heartbeat_seconds"],
                    POSITIVE),
    "optimizer.b1": DECAY, "optimizer.b2": DECAY, "optimizer.ema_decay": PROBABILITY,
    "train.guard.lr_factor": _Range(0, 1, low_open=True),
    "train.guard.loss_factor": _Range(1, low_open=True),
}
# yapf: enable

# Fields that left the config, and what to set instead: one who still sets one is told where it
# went (by validate, and by the config flags for an override), not that nothing reads it.
MOVED = {"diffusion.experts.num_experts": "config.stages.<stage>.num_experts"}  # each stage's


def moved_field_error(path: str) -> UserError | None:
  """The error for setting `path` ('a.b.c', without 'config.') when the field moved, else None."""
  if path in MOVED:
    return UserError(f"config.{path} is no field any more: set {MOVED[path]} instead")
  return None


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises UserError at the first field the run cannot use. With `num_devices`, also the mesh
  and the batch against that many devices."""
  flat = flatten(config)
  moved = sorted(MOVED.keys() & flat.keys())
  if moved:
    raise moved_field_error(moved[0])
  _check_fields(flat)
  _check_stages(config)
  flow.check_config(config.diffusion)
  _check_esgf(config.esgf, min(config.stages[n].num_experts for n in stage_names(config)))
  _check_lock(config.train)
  latent_space = make_latent_space(config.latent, load_params=False)  # kind, factor, header
  _check_crop_size(config.data, latent_space.factor)
  _check_model(config, latent_space)
  _check_sharding_rules(config.sharding_rules)
  sizes = mesh_sizes(config, num_devices)
  if num_devices is not None:
    _check_batch(config.data.batch_size, sizes, config.sharding_rules)


def stage_names(config) -> list:
  """The stages of config.stage_order, in order."""
  return [s.strip() for s in config.stage_order.split(",") if s.strip()]


def stage_kind(config, name: str) -> str:
  """'flow' or 'distill' (a one-step student of the stage before it); a config.json written
  before stages had kinds holds flow stages only."""
  return config.stages[name].get("kind", "flow")


def mesh_sizes(config, num_devices: int | None = None) -> dict:
  """config.mesh's axis sizes (sharding.mesh_sizes), a UserError when they do not fit."""
  try:
    return sharding.mesh_sizes(dict(config.mesh), num_devices)
  except ValueError as e:
    raise UserError(f"config.mesh: {e}") from e


def _error(path: str, value, requirement: str) -> UserError:
  return UserError(f"config.{path}={value!r} {requirement}")


def _alternatives(allowed) -> str:
  """('a', 'b', 'c') -> "'a', 'b' or 'c'"."""
  names = [repr(a) for a in allowed]
  return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def flatten(tree, prefix="") -> dict:
  """{'data.eval.batch_size': 2, ...}; lists and tuples are values."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _check_known(section, fields: set, path: str):
  """Fields of `section` (at `path`) that nothing reads are typos."""
  unknown = sorted(set(section) - fields)
  if unknown:
    raise _error(f"{path}.{unknown[0]}", section[unknown[0]],
                 f"is no field of {path} ({', '.join(sorted(fields))})")


def _rule_key(path: str) -> str:
  """'stages.moe.optimizer.name' -> 'optimizer.name'; 'stages.moe.max_steps' ->
  'stages.*.max_steps'; any other path is its own key."""
  path = re.sub(r"^stages\.[^.]+\.optimizer\.", "optimizer.", path)
  return re.sub(r"^stages\.[^.]+\.", "stages.*.", path)


def _check_fields(flat: dict):
  """The CHOICES and RANGES, probabilities (*_prob), their weights (*_probs) and intervals
  drawn from (*_range, e.g. the degradation's)."""
  for path, value in flat.items():
    key = _rule_key(path)
    if key in CHOICES:
      for item in value if isinstance(value, (tuple, list)) else (value,):
        if item not in CHOICES[key]:
          raise _error(path, item, f"must be {_alternatives(CHOICES[key])}")
    rule = RANGES.get(key, PROBABILITY if key.endswith("_prob") else None)
    if rule is not None and not rule.holds(value):
      raise _error(path, value, f"must be {rule}")
    if key.endswith("_probs") and (min(value) < 0 or sum(value) <= 0):
      raise _error(path, value, "must be weights >= 0 with a positive sum")
    # A tuple flag given twice appends (ml_collections), which would reach a data worker.
    if key.endswith("_range") and (len(value) != 2 or value[0] > value[1]):
      raise _error(
          path, value, "must be a (low, high) pair with low <= high; a tuple "
          "override given twice is appended to, not replaced")


def _check_stages(config):
  """Each stage's optimizer overrides and experts; stage_order against config.stages."""
  for name, stage in config.stages.items():
    _check_known(stage.optimizer, set(optimizer.default_config()), f"stages.{name}.optimizer")
    experts.check_num_experts(stage.num_experts, f"config.stages.{name}.num_experts")
    # The split and its log-SNR range, for this stage's number of experts.
    experts.boundaries_from_config(config.diffusion.experts, stage.num_experts)
  names, defined = stage_names(config), ", ".join(config.stages)
  if not names:
    raise _error("stage_order", config.stage_order, f"must name stages of config.stages "
                 f"({defined})")
  for name in names:
    if name not in config.stages:
      raise _error("stage_order", config.stage_order, f"names stage {name!r}, which "
                   f"config.stages does not define ({defined})")
    experts_of_stage = config.stages[name].num_experts
    if config.data.batch_size % experts_of_stage:  # each expert trains on an equal share
      raise _error("data.batch_size", config.data.batch_size, f"must split evenly over the "
                   f"{experts_of_stage} experts of stage {name}")
  _check_distill_stages(config, names)
  restart = config.train.get("restart_stage", "")
  if restart and restart not in names:
    raise _error("train.restart_stage", restart, f"must name a stage of stage_order "
                 f"({', '.join(names)})")


def _check_distill_stages(config, names: list):
  """A distill stage trains one student from a teacher: the stage before it, or for the first
  stage a checkpoint of another run (config.distill.teacher)."""
  for index, name in enumerate(names):
    if stage_kind(config, name) != "distill":
      continue
    if config.stages[name].num_experts != 1:
      raise _error(f"stages.{name}.num_experts", config.stages[name].num_experts,
                   "must be 1: a distill stage trains a single-expert student")
    if index == 0 and not config.distill.teacher:
      raise _error(
          "stage_order", config.stage_order, f"starts with distill stage {name!r}, "
          "which has no teacher: put the stage to distill before it, or set "
          "config.distill.teacher to a checkpoint of a trained run")


def _check_esgf(esgf_cfg, fewest_experts: int):
  """ESGF's own knobs, and its metrics among those every evaluation of every stage returns (the
  experts' flow losses up to the smallest stage's): a misspelt one would never be logged, and
  the stage would silently run to its step budget."""
  esgf.validate_config(esgf_cfg)
  logged = metric_keys.logged_keys(fewest_experts)
  for name, _ in esgf.parse_metrics(esgf_cfg.metrics):
    if name not in logged:
      raise _error(
          "esgf.metrics", esgf_cfg.metrics, f"names {name!r}, which validation does "
          f"not log; choose from {_alternatives(logged)}")


def _check_lock(train):
  """A live run's heartbeat must land several times within the stale threshold, so that one
  late beat does not hand its workdir to another run."""
  if not train.lock_stale_seconds >= 3 * train.lock_heartbeat_seconds:
    raise _error(
        "train.lock_stale_seconds", train.lock_stale_seconds, "must be at least 3 × "
        f"train.lock_heartbeat_seconds ({train.lock_heartbeat_seconds:g}): a live "
        "run's heartbeat must land several times within it")


def _check_crop_size(data, latent_factor: int):
  """An HR crop must split into whole LR pixels and whole latent cells."""
  cell = math.lcm(data.scale, latent_factor)
  if data.crop_size % cell:
    raise _error(
        "data.crop_size", data.crop_size, f"must be a multiple of {cell} (the scale "
        f"{data.scale} and the latent factor {latent_factor})")


def _check_model(config, latent_space):
  """The DiT's fields against each other, the latent space and the data."""
  model, data = config.model, config.data
  _check_known(model, {f.name for f in dataclasses.fields(dit.DiTConfig)}, "model")
  if model.hidden % model.heads:
    raise _error("model.hidden", model.hidden, f"must be a multiple of model.heads={model.heads}")
  if model.latent_channels != latent_space.channels:
    raise _error(
        "model.latent_channels", model.latent_channels, f"must be the "
        f"{latent_space.channels} channels of the latent space ({config.latent.kind})")
  grid = data.crop_size // latent_space.factor
  if grid % model.patch_size:
    raise _error("model.patch_size", model.patch_size, f"must divide the {grid}-cell latent "
                 f"side of data.crop_size={data.crop_size}")
  if model.lr_channels:  # the LR stem's stride-2 convs take the LR image to the latent grid
    depth = lr_stem_depth(latent_space.factor, data.scale)
    if model.lr_stem_convs != depth:
      raise _error(
          "model.lr_stem_convs", model.lr_stem_convs, f"must be {depth} = log2(latent "
          f"factor {latent_space.factor} / scale {data.scale})")


def _check_sharding_rules(rules):
  """Each logical axis maps to mesh axes the mesh has."""
  for name, axes in rules:
    unknown = set(sharding.mesh_axes_of(axes)) - set(sharding.MESH_AXES)
    if unknown:
      raise _error(
          "sharding_rules", [name, axes], f"maps to unknown mesh axes "
          f"{sorted(unknown)}; the axes are {', '.join(sharding.MESH_AXES)}")


def _check_batch(batch_size: int, sizes: dict, rules):
  """The global batch is sharded over the rules' batch axes (sharding.batch_axes)."""
  batch_axes = sharding.batch_axes([tuple(r) for r in rules])
  shards = math.prod(sizes[axis] for axis in batch_axes)
  if batch_size % shards:
    axes = " × ".join(f"{axis} {sizes[axis]}" for axis in batch_axes)
    raise _error("data.batch_size", batch_size, f"does not split over the mesh's {shards} batch "
                 f"shards ({axes})")
