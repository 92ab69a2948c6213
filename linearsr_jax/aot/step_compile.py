"""Compile a config's train and sampler steps for a TPU slice or GPU nodes, with neither
attached, and say what they cost per chip.

The train step is `Run.jit_train_step`, the very jit `linearsr train` runs; its arguments are
the abstract state, batch and DC-AE params with the shardings training gives them. The sampler
step is `make_super_resolve` as validation and `linearsr upscale` jit it.
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
from linearsr_jax.diffusion import distill
from linearsr_jax.inference.super_resolve import make_super_resolve
from linearsr_jax.train.loop import Run


def abstract_batch(run: Run, batch_size: int, crop: int, batch_sharding) -> dict:
  """ShapeDtypeStructs of one global training batch."""
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


def compile_train_step(run: Run, stage: str, batch_size: int, counting: bool = False):
  """(compiled train step, compile seconds) for `batch_size` global HR crops; `counting`:
  compiled to count FLOPs (COUNTING_OPTIONS), not as it runs."""
  abstract, shardings = run.abstract_state(stage)
  batch = abstract_batch(run, batch_size, run.config.data.crop_size,
                         sharding.batch_sharding(run.mesh, run.rules))
  # A distill step takes its teacher's params too; its FLOPs include the teacher's sampling.
  teacher = (run.abstract_teacher(stage),) if run.is_distill(stage) else ()
  step = run.jit_train_step(stage, shardings,
                            *(jax.tree.map(lambda x: x.sharding, t) for t in teacher))
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    return _timed_compile(step, abstract, batch, run.latent_params, *teacher,
                          options=_counting_options(run) if counting else None)


def compile_sampler(run: Run, stage: str):
  """(compiled super-resolve of one eval batch, compile seconds): validation's sampler."""
  abstract, _ = run.abstract_state(stage)
  data = run.config.data
  replicated = sharding.replicated(run.mesh)
  batch = abstract_batch(run, data.eval.batch_size, data.eval.crop_size, replicated)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
  sr = jax.jit(
      make_super_resolve(run.model, run.latent_space, run.config.diffusion, scale=data.scale,
                         steps=run.config.train.eval_steps))
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
  """Per-chip stats of the train step with `depth` unrolled blocks, compiled to count."""
  config = _blocks_config(run.config, depth)
  blocks = Run(config, run.workdir, load_weights=False, devices=list(run.mesh.devices.flat))
  return hlo_stats.stats(compile_train_step(blocks, stage, batch_size, counting=True)[0])


def train_step_stats(run: Run, stage: str, batch_size: int, compiled=None) -> dict:
  """Per-chip stats of the train step and its compile time. Memory is the program's that runs;
  FLOPs, bytes accessed and collectives are those of the whole depth, every block and every
  matmul counted (hlo_stats.extrapolated from programs of 1 and 2 unrolled blocks, compiled
  to count: XLA counts a scanned body, or a windowed matmul's loop, once), plus the DC-AE
  encoder's when the step encodes. `compiled`: (the step at this batch, its compile seconds)
  when already compiled."""
  compiled, seconds = compiled or compile_train_step(run, stage, batch_size)
  result = hlo_stats.stats(compiled)
  depth = run.config.model.depth
  if depth <= 2:  # nothing to extrapolate: the whole depth, unrolled, is counted directly
    whole = counted_stats(run, stage, batch_size, depth)
    counted = {k: whole[k] for k in hlo_stats.COUNTED}
  else:
    counted = hlo_stats.extrapolated(counted_stats(run, stage, batch_size, 1),
                                     counted_stats(run, stage, batch_size, 2), depth)
  result["encoder_flops"] = 0.0
  if run.config.data.hr_latents == "encode" and run.latent_space.abstract_params():
    encoder = encoder_stats(run, batch_size)
    counted, result["encoder_flops"] = hlo_stats.added(counted, encoder), encoder["flops"]
  result.update(counted)
  result["compile_seconds"] = seconds
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
  one expert's, since each sample passes through one; a distill step adds its teacher's sampler
  forwards, 2·N·tokens each) and the DC-AE encoder's forward over
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
             run.mesh.devices.size if run.is_distill(stage) else 0.0)
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
