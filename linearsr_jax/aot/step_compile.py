"""Compile a config's train and sampler steps for a TPU slice or GPU nodes, with neither
attached, and say what they cost per chip.

The train step is `Run.jit_train_step`, the very jit `linearsr train` runs; its arguments are
the abstract state, batch and DC-AE params with the shardings training gives them. The sampler
step is `make_super_resolve` as validation and `linearsr upscale` jit it; `sampler_stats` costs
it for one image on one chip, its loop over steps counted in full.
"""

import copy
import dataclasses
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from linearsr_jax import sharding
from linearsr_jax.aot import hlo_stats
from linearsr_jax.diffusion import distill, experts, samplers
from linearsr_jax.inference.super_resolve import make_super_resolve
from linearsr_jax.train.loop import Run


def abstract_batch(run: Run, batch_size: int, crop: int, batch_sharding,
                   teacher_targets: bool = False) -> dict:
  """ShapeDtypeStructs of one global training batch; `teacher_targets`: with a distill stage's
  precomputed targets (its start 'x1' and the teacher's 'teacher_x0', latents)."""
  s, tags = run.config.data.scale, run.config.tags
  cond = ((batch_size, tags.max_tokens),
          jnp.int32) if tags.encoder == "hash" else ((batch_size, tags.max_tokens,
                                                      run.config.model.caption_channels),
                                                     jnp.float32)
  shapes = {
      "lr": ((batch_size, crop // s, crop // s, 3), jnp.float32), "cond": cond,
      "cond_mask": ((batch_size, tags.max_tokens), jnp.bool_)
  }
  if run.config.data.hr_latents == "precomputed":
    f = run.latent_space.factor
    shapes["hr_latent"] = ((batch_size, crop // f, crop // f, run.latent_space.channels),
                           jnp.float32)
  else:
    shapes["hr"] = ((batch_size, crop, crop, 3), jnp.float32)
  if teacher_targets:
    f = run.latent_space.factor
    shapes["x1"] = shapes["teacher_x0"] = ((batch_size, crop // f, crop // f,
                                            run.latent_space.channels), jnp.float32)
  return {
      k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
      for k, (shape, dtype) in shapes.items()
  }


class DoesNotFit(Exception):
  """The TPU compiler refused the program: it needs more HBM than the chip has. (XLA:GPU
  compiles any size: there, fit is judged from the memory analysis alone.)"""

  # libtpu words it two ways: "… HLO temporaries (15.95G) exceeds available HBM (15.75G)" and
  # "… Used 16.01G of 15.75G hbm. Exceeded hbm capacity by 266.01M."
  SIZES = (r"Used ([\d.]+[KMGT]) of ([\d.]+[KMGT]) hbm", r"\(([\d.]+[KMGT])\)\D+\(([\d.]+[KMGT])\)")

  def __init__(self, message: str):
    super().__init__(message)
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    found = next((m.groups() for m in map(lambda p: re.search(p, message), self.SIZES) if m),
                 ("nan ", "nan "))
    self.required, self.available = (float(v[:-1]) * scale.get(v[-1], 1) for v in found)


# XLA:TPU turns a matmul whose operand is gathered over FSDP into a loop over the shards
# (windowed einsum), and cost analysis counts a loop body once: 17 % of the FLOPs of a SANA-600M
# block went missing on v5e-64. The programs that count FLOPs are compiled without it.
COUNTING_OPTIONS = {
    "tpu": {
        "xla_tpu_enable_windowed_einsum_for_all_gather": False,
        "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False
    }
}


def _counting_options(run: Run):
  return COUNTING_OPTIONS.get(run.mesh.devices.flat[0].platform) or None


def _timed_compile(lowerable, *args, options=None):
  start = time.perf_counter()
  try:
    compiled = lowerable.lower(*args).compile(compiler_options=options)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" in str(e):
      raise DoesNotFit(str(e).splitlines()[0]) from None
    raise
  return compiled, time.perf_counter() - start


def samples_teacher(run: Run, stage: str) -> bool:
  """Whether `stage`'s step samples a teacher: a distill stage without precomputed targets."""
  return run.is_distill(stage) and not run.config.distill.targets


def compile_train_step(run: Run, stage: str, batch_size: int, counting: bool = False,
                       targets_given: bool = False):
  """(compiled train step, compile seconds) for `batch_size` global HR crops; `counting`:
  compiled to count FLOPs (COUNTING_OPTIONS), not as it runs. A distill step takes its
  teacher's targets with the batch when they are precomputed, or `targets_given`."""
  abstract, shardings = run.abstract_state(stage)
  given = run.is_distill(stage) and (targets_given or not samples_teacher(run, stage))
  batch = abstract_batch(run, batch_size, run.config.data.crop_size,
                         sharding.batch_sharding(run.mesh, run.rules), teacher_targets=given)
  # A distill step takes its teacher's params too (unused when the targets are given).
  teacher = (run.abstract_teacher(stage),) if run.is_distill(stage) else ()
  step = run.jit_train_step(stage, shardings,
                            *(jax.tree.map(lambda x: x.sharding, t) for t in teacher))
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    return _timed_compile(step, abstract, batch, run.latent_params, *teacher,
                          options=_counting_options(run) if counting else None)


def compile_sampler(run: Run, stage: str):
  """(compiled super-resolve of one eval batch, compile seconds): validation's sampler."""
  data = run.config.data
  batch = abstract_batch(run, data.eval.batch_size, data.eval.crop_size,
                         sharding.replicated(run.mesh))
  return _compile_super_resolve(run, stage, batch, steps=run.config.train.eval_steps)


def _compile_super_resolve(run: Run, stage: str, batch: dict, **sampler_overrides):
  """(compiled make_super_resolve of `batch`'s LR images, compile seconds)."""
  abstract, _ = run.abstract_state(stage)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(run.mesh))
  sr = jax.jit(
      make_super_resolve(run.model, run.latent_space, run.config.diffusion,
                         scale=run.config.data.scale, **sampler_overrides))
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    return _timed_compile(sr, abstract.ema_params, run.latent_params, batch["lr"], batch["cond"],
                          batch["cond_mask"], key)


def _blocks_config(config, depth: int):
  """`config` with `depth` unrolled blocks and precomputed HR latents, for counting what one
  block adds (the DC-AE encoder is counted on its own: its convolutions would dominate both
  compiles and cancel in the difference)."""
  config = copy.deepcopy(config)
  config.model.depth = depth
  config.model.scan_layers = False
  config.data.hr_latents = "precomputed"
  return config


def counted_stats(run: Run, stage: str, batch_size: int, depth: int) -> dict:
  """Per-chip stats of the train step with `depth` unrolled blocks, compiled to count. A
  distill step that samples its teacher is counted in two parts, since XLA counts the body of
  the sampler's loop once: the step from given targets, and the teacher's velocity evaluation,
  compiled on its own and counted as many times as the sampler runs it."""
  config = _blocks_config(run.config, depth)
  blocks = Run(config, run.workdir, load_weights=False, devices=list(run.mesh.devices.flat))
  if not samples_teacher(run, stage):
    return hlo_stats.stats(compile_train_step(blocks, stage, batch_size, counting=True)[0])
  student = compile_train_step(blocks, stage, batch_size, counting=True, targets_given=True)[0]
  velocity = _compile_teacher_velocity(blocks, stage, batch_size)
  return hlo_stats.added(
      hlo_stats.stats(student),
      hlo_stats.repeated(hlo_stats.stats(velocity),
                         distill.teacher_velocities(run.config.diffusion.sampler)))


def _compile_teacher_velocity(run: Run, stage: str, batch_size: int):
  """A distill step's teacher evaluating one velocity over the global batch (one expert, its
  null pass with it under guidance), as its sampler does each step; compiled to count."""
  batch = abstract_batch(run, batch_size, run.config.data.crop_size,
                         sharding.batch_sharding(run.mesh, run.rules), teacher_targets=True)
  return _compile_velocity(run, run.abstract_teacher(stage), batch["x1"], batch,
                           _counting_options(run), expert=0)[0]


def _compile_velocity(run: Run, params, x, batch: dict, options, expert=None):
  """(compiled network evaluation of one sampler step of `x`: one expert's forward, with
  guidance the conditional and null passes as one batch, as samplers.guided_velocity runs it;
  compile seconds). `expert`: the expert of stacked `params` to run, picked inside the program
  so that its sharding is the stacked params'; None when `params` are one expert's."""
  cfg = run.config.diffusion

  def velocity(params, x, lr, cond, cond_mask):
    if expert is not None:
      params = experts.select_expert(params, expert)
    null = (jnp.zeros_like(cond), jnp.zeros_like(cond_mask))
    t = jnp.full((x.shape[0],), 0.5 * cfg.timestep_scale, jnp.float32)
    return samplers.guided_velocity(experts.model_apply(run.model), params, x, t,
                                    (lr, cond, cond_mask), null, cfg.sampler.guidance_scale)

  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    return _timed_compile(jax.jit(velocity), params, x, batch["lr"], batch["cond"],
                          batch["cond_mask"], options=options)


def train_step_stats(run: Run, stage: str, batch_size: int, compiled=None) -> dict:
  """Per-chip stats of the train step that runs: its memory and compile time, and XLA's own
  counts of that program. `compiled`: (the step at this batch, its compile seconds) when
  already compiled. with_counted_work adds the whole depth's work; a step that does not fit
  needs no more than this."""
  compiled, seconds = compiled or compile_train_step(run, stage, batch_size)
  return dict(hlo_stats.stats(compiled), compile_seconds=seconds)


def with_counted_work(run: Run, stage: str, batch_size: int, train: dict) -> dict:
  """`train` (train_step_stats) with FLOPs, bytes accessed and collectives of the whole depth,
  every block and every matmul counted (hlo_stats.extrapolated from programs of 1 and 2
  unrolled blocks, compiled to count: XLA counts a scanned body, or a windowed matmul's loop,
  once), plus the DC-AE encoder's when the step encodes. "by_kind_per_block": FLOPs and bytes
  by kind of one block and of the rest (the step's encoder, when it encodes, not included),
  for a model of 3 blocks or more: one of 1 or 2, compiled whole, is not split (a test or toy
  config, for which a second counting program would double the compiler's work)."""
  result = dict(train)
  depth = run.config.model.depth
  if depth <= 2:  # nothing to extrapolate: the whole depth, unrolled, is counted directly
    whole = counted_stats(run, stage, batch_size, depth)
    counted = {k: whole[k] for k in hlo_stats.COUNTED}
  else:
    one, two = (counted_stats(run, stage, batch_size, d) for d in (1, 2))
    counted = hlo_stats.extrapolated(one, two, depth)
    result["by_kind_per_block"] = hlo_stats.block_and_rest(one, two)
  result["encoder_flops"] = 0.0
  if run.config.data.hr_latents == "encode" and run.latent_space.abstract_params():
    encoder = encoder_stats(run, batch_size)
    counted, result["encoder_flops"] = hlo_stats.added(counted, encoder), encoder["flops"]
  result.update(counted)
  return result


def encoder_stats(run: Run, batch_size: int) -> dict:
  """Per-chip stats of the DC-AE encoder's forward over one batch of HR crops, alone."""
  crop = run.config.data.crop_size
  batch = jax.ShapeDtypeStruct((batch_size, crop, crop, 3), jnp.float32,
                               sharding=sharding.batch_sharding(run.mesh, run.rules))
  compiled, _ = _timed_compile(jax.jit(run.latent_space.encode_fn), run.latent_params, batch,
                               options=_counting_options(run))
  return hlo_stats.stats(compiled)


def model_flops(run: Run, stage: str, batch_size: int, encoder_flops=None) -> dict:
  """The work the step must do, per chip: 6·N·tokens for the DiT (N = its token-wise params,
  one expert's, since each sample passes through one; a distill step that samples its teacher
  adds the sampler's forwards, 2·N·tokens each) and the DC-AE encoder's forward over
  the HR crops unless their latents are precomputed (its own compile's count, or
  `encoder_flops` when already counted)."""
  crop, factor = run.config.data.crop_size, run.latent_space.factor
  one_expert = jax.tree_util.tree_flatten_with_path(run.abstract_state(stage)[0].params)[0]
  token_wise = sum(
      int(np.prod(x.shape[1:]))
      for p, x in one_expert
      if "'dit'" in jax.tree_util.keystr(p) and not any(k in jax.tree_util.keystr(p)
                                                        for k in ("lr_stem", "caption_", "time_")))
  tokens = batch_size * (crop // factor)**2 // run.config.model.patch_size**2
  dit = 6.0 * token_wise * tokens / run.mesh.devices.size
  # A distill step also samples its teacher: forwards alone, 2·N·tokens each.
  teacher = (2.0 * token_wise * tokens * distill.teacher_forwards(run.config.diffusion.sampler) /
             run.mesh.devices.size if samples_teacher(run, stage) else 0.0)
  dit += teacher
  encoder = 0.0
  if run.latent_space.abstract_params() and run.config.data.hr_latents == "encode":
    encoder = (encoder_stats(run, batch_size)["flops"] if encoder_flops is None else encoder_flops)
  return {
      "dit_params_token_wise": token_wise, "tokens": tokens, "dit_flops": dit,
      "teacher_flops": teacher, "encoder_flops": encoder, "total_flops": dit + encoder
  }


@dataclasses.dataclass(frozen=True)
class Roofline:
  seconds: float
  bound: str  # "compute" or "memory"
  images_per_second_per_chip: float


def roofline(pod, flops: float, bytes_accessed: float, batch_size: int) -> Roofline:
  """A lower bound of the step time on one chip of `pod` (a tpu_pods.Pod or gpu_nodes.Node)
  from its peak bf16 FLOP/s and HBM bandwidth."""
  compute = flops / (pod.chip.peak_bf16_tflops * 1e12)
  memory = bytes_accessed / (pod.chip.hbm_gbps * 1e9)
  seconds = max(compute, memory)
  return Roofline(seconds, "compute" if compute >= memory else "memory",
                  batch_size / pod.chips / seconds if seconds else float("inf"))


def _one_image(run: Run, image: int) -> dict:
  """Abstract LR image and condition of one image of HR side `image`, on the chip."""
  return abstract_batch(run, 1, image, sharding.replicated(run.mesh))


def _expert_params(run: Run, stage: str):
  """Abstract params of one expert (the sampler's per-segment slice), on the chip."""
  abstract, _ = run.abstract_state(stage)
  one = jax.eval_shape(lambda p: experts.select_expert(p, 0), abstract.ema_params)
  replicated = sharding.replicated(run.mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), one)


def compile_sampling(run: Run, stage: str, image: int):
  """(compiled whole sampling of one image of HR side `image`: the LR-source encode if any, the
  config's sampler steps, guidance and expert switch, the decode; compile seconds)."""
  return _compile_super_resolve(run, stage, _one_image(run, image))


def compile_sampler_forward(run: Run, stage: str, image: int, counting: bool = False):
  """(compiled network evaluation of one sampler step for one image of HR side `image`: one
  expert's forward, with guidance the conditional and null passes as one batch of 2, as
  samplers.guided_velocity runs it; compile seconds)."""
  side = image // run.latent_space.factor
  x = jax.ShapeDtypeStruct((1, side, side, run.latent_space.channels), jnp.float32,
                           sharding=sharding.replicated(run.mesh))
  return _compile_velocity(run, _expert_params(run, stage), x, _one_image(run, image),
                           _counting_options(run) if counting else None)


def _latent_stats(run: Run, image: int) -> dict:
  """Per-chip stats of the autoencoder's work in one image's sampling: the decode of the
  output latent and, for source 'lr', the encode of the upsampled LR image (zero in a
  parameter-free pixel space, whose (un)shuffle is a reshape)."""
  zero = {k: 0.0 if k in ("flops", "bytes_accessed") else {} for k in hlo_stats.COUNTED}
  if not run.latent_space.abstract_params():
    return {"encode": zero, "decode": zero}
  replicated = sharding.replicated(run.mesh)
  side = image // run.latent_space.factor
  latent = jax.ShapeDtypeStruct((1, side, side, run.latent_space.channels), jnp.float32,
                                sharding=replicated)
  hr = jax.ShapeDtypeStruct((1, image, image, 3), jnp.float32, sharding=replicated)
  count = lambda fn, x: hlo_stats.stats(
      _timed_compile(jax.jit(fn), run.latent_params, x, options=_counting_options(run))[0])
  return {
      "encode": count(run.latent_space.encode_fn, hr) if run.config.diffusion.source == "lr" else
                zero, "decode": count(run.latent_space.decode_fn, latent)
  }


def network_evaluations(run: Run) -> int:
  """Network evaluations of one sampling (each a guided forward): Heun evaluates twice a step."""
  sampler = run.config.diffusion.sampler
  return sampler.steps * (2 if sampler.solver == "heun" else 1)


def sampler_stats(run: Run, stage: str, image: int) -> dict:
  """Per-chip stats of sampling one image of HR side `image` (`run` on one chip, every mesh
  axis 1): {"forward", "sampling", "encode", "decode", "evaluations"}.

  Memory is that of the programs that run (the forward, and the whole sampling as
  make_super_resolve jits it). FLOPs and bytes are counted in full: the forward's blocks
  extrapolated from 1 and 2 unrolled blocks, as the train step's; the sampling's loop over steps
  by multiplying: XLA counts a while body once, and the sampler's loop bounds are traced (the
  expert segments), so it cannot be unrolled for counting. The sampling is the forward times
  the network evaluations plus the autoencoder's encode and decode (the solver's few
  elementwise updates of the latent a step are left out: negligible beside a forward).
  """
  forward = hlo_stats.stats(compile_sampler_forward(run, stage, image)[0])
  depth = run.config.model.depth
  counted_run = lambda d: Run(_blocks_config(run.config, d), run.workdir, load_weights=False,
                              devices=list(run.mesh.devices.flat))
  counted_at = lambda d: hlo_stats.stats(
      compile_sampler_forward(counted_run(d), stage, image, counting=True)[0])
  if depth <= 2:
    forward.update({k: counted_at(depth)[k] for k in hlo_stats.COUNTED})
  else:
    forward.update(hlo_stats.extrapolated(counted_at(1), counted_at(2), depth))
  latent = _latent_stats(run, image)
  evaluations = network_evaluations(run)
  compiled, seconds = compile_sampling(run, stage, image)
  sampling = hlo_stats.stats(compiled)
  counted = hlo_stats.added(hlo_stats.repeated(forward, evaluations),
                            hlo_stats.added(latent["encode"], latent["decode"]))
  sampling.update(counted)
  sampling["compile_seconds"] = seconds
  return dict(latent, forward=forward, sampling=sampling, evaluations=evaluations)
