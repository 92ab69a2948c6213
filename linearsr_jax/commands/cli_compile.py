"""`linearsr compile --config C --topology T [--config.K=V …]`: does a config fit and shard on a
Cloud TPU slice or on NVIDIA GPU nodes? Compiled here, on the CPU, with libtpu's description of
that slice or the CUDA plugin's of those nodes.

Prints (and writes with --out) the mesh, per-chip memory against the chip's HBM, compiled and
model FLOPs, collectives, compile time and a roofline bound of the step time. Exit 1 when the
train step does not fit; a bad topology, mesh or batch is one line and exit 2.

With --sampler_image N it compiles the sampler instead, for one N×N output image on one chip of
the slice or nodes: one network evaluation (with guidance the conditional and null passes as
one batch) and the whole sampling (the config's steps, guidance, expert switch, the
autoencoder's decode), with their memory, FLOPs, bytes and roofline time beside the paper's.
Exit 1 when the sampling does not fit the chip.
"""

import copy
import json
import math
import os
import sys

from linearsr_jax.errors import UserError

# cli.main hands every argument after `compile` to absl untouched (the --config.* overrides).
PASSES_FLAGS_THROUGH = True
GIB = 1024**3
# The LinearSR paper's 1024² timings on an H-series GPU: one network evaluation, and the whole
# sampling (20 steps and the DC-AE decode).
PAPER_SECONDS = {"forward": 0.036, "sampling": 0.830}


def add_arguments(parser):
  parser.usage = ("linearsr compile --config FILE --topology SLICE|NODES [--stage S] "
                  "[--find_batch | --sampler_image N] [--out report.json] "
                  "[--config.KEY=VALUE ...]")


def _own_flags(argv):
  """(--topology, --stage, --find_batch, --sampler_image, --out, the rest for the config
  parser)."""
  import argparse
  parser = argparse.ArgumentParser(prog="linearsr compile", add_help=False)
  parser.add_argument("--topology", required=True)
  parser.add_argument("--stage")
  parser.add_argument("--find_batch", action="store_true")
  parser.add_argument("--sampler_image", type=int)
  parser.add_argument("--out")
  try:
    own, rest = parser.parse_known_args(argv)
  except SystemExit:
    raise UserError("compile needs --topology SLICE or NODES (e.g. v5e-16, h100-8) and an "
                    "integer --sampler_image if any") from None
  if own.sampler_image is not None and own.sampler_image <= 0:
    raise UserError(f"--sampler_image {own.sampler_image}: the output image's side must be > 0")
  return own, rest


def parse_topology(name: str):
  """(the TPU slice or GPU nodes named, a function giving its devices)."""
  from linearsr_jax.aot import gpu_nodes, tpu_pods
  key = name.strip().lower()
  if gpu_nodes.NAME.fullmatch(key):
    node = gpu_nodes.parse_node(name)
    return node, lambda: gpu_nodes.node_devices(node)
  if tpu_pods.NAME.fullmatch(key):
    pod = tpu_pods.parse_pod(name)
    return pod, lambda: tpu_pods.pod_devices(pod)
  raise UserError(f"--topology {name!r}: expected a Cloud TPU slice name such as v5e-16, "
                  f"v5p-128, v4-32 or v6e-64, or NVIDIA nodes of {gpu_nodes.GPUS_PER_NODE} GPUs: "
                  f"{', '.join(f'{g}-8' for g in gpu_nodes.GPUS)}, h100-16 (2 nodes), …")


def report(config, pod, devices, stage: str, batch_size: int, compiled=None) -> dict:
  """Everything `linearsr compile` prints; `compiled`: the train step at `batch_size` with its
  compile seconds, when `find_batch` has it already."""
  from linearsr_jax.aot import step_compile
  from linearsr_jax.train.loop import Run

  config.data.batch_size = batch_size
  run = Run(config, os.devnull, load_weights=False, devices=devices)
  hbm = pod.chip.hbm_gib * GIB
  head = {
      "topology": pod.name, "platform": devices[0].platform, "device_topology": pod.topology_name,
      "chips": pod.chips, "mesh": dict(run.mesh.shape), "stage": stage,
      "experts": config.stages[stage].num_experts, "global_batch": batch_size,
      "padding_free_multiple": _batch_unit(config, run.mesh, stage), "hbm_bytes": hbm
  }
  try:
    train = step_compile.train_step_stats(run, stage, batch_size, compiled)
  except step_compile.DoesNotFit as e:
    return dict(head, fits=False, required_bytes=e.required, available_bytes=e.available,
                compiler=str(e))
  if train["memory"]["total"] > hbm:
    # XLA:GPU compiles a step of any size: stop where the TPU compiler would have refused it,
    # before the counting programs (the work of a step that cannot run is of no use).
    return dict(head, fits=False, train_step=train)
  train = step_compile.with_counted_work(run, stage, batch_size, train)
  model = step_compile.model_flops(run, stage, batch_size, train["encoder_flops"])
  sampler, sampler_seconds = step_compile.compile_sampler(run, stage)
  bound = step_compile.roofline(pod, train["flops"], train["bytes_accessed"], batch_size)
  return dict(
      head, **{
          "train_step": train,
          "model": model,
          "compiled_over_model_flops": train["flops"] / model["total_flops"],
          "sampler_step": {
              "memory": sampler.memory_analysis().temp_size_in_bytes +
                        sampler.memory_analysis().argument_size_in_bytes,
              "compile_seconds": sampler_seconds
          },
          "fits": train["memory"]["total"] <= hbm,
          "roofline": {
              "seconds": bound.seconds, "bound": bound.bound,
              "images_per_second_per_chip": bound.images_per_second_per_chip,
              "peak_bf16_tflops": pod.chip.peak_bf16_tflops, "hbm_gbps": pod.chip.hbm_gbps
          },
      })


def _required_bytes(r: dict) -> float:
  return r["train_step"]["memory"]["total"] if "train_step" in r else r["required_bytes"]


def format_report(r: dict) -> str:
  first = (f"{r['topology']} ({r['platform']} {r['device_topology']}, {r['chips']} chips), mesh " +
           " × ".join(f"{k} {v}" for k, v in r["mesh"].items()))
  batch = f"stage {r['stage']}: {r['experts']} expert(s), global batch {r['global_batch']}"
  if r["global_batch"] % r["padding_free_multiple"]:
    batch += (f" (PADDED: each expert's share is split over the batch shards, so batches that "
              f"are not multiples of {r['padding_free_multiple']} leave chips computing empty "
              "rows)")
  if "train_step" not in r:
    return "\n".join([first, batch, f"DOES NOT FIT: the TPU compiler says: {r['compiler']}"])
  t, m = r["train_step"], r["train_step"]["memory"]
  memory = (f"memory per chip: arguments {m['arguments'] / GIB:.2f} GiB, outputs "
            f"{m['outputs'] / GIB:.2f}, temporaries {m['temporaries'] / GIB:.2f}, aliased "
            f"{m['aliased'] / GIB:.2f}, total {m['total'] / GIB:.2f} of "
            f"{r['hbm_bytes'] / GIB:.0f} GiB -> {'fits' if r['fits'] else 'DOES NOT FIT'}")
  if "model" not in r:  # a GPU step too large for the GPU: compiled, nothing more
    return "\n".join([first, batch, memory])
  collectives = ", ".join(f"{k} {v / GIB:.3f} GiB" for k, v in t["collectives"].items() if v)
  lines = [
      first,
      batch,
      memory,
      f"compiled per chip per step: {t['flops'] / 1e12:.3f} TFLOP, "
      f"{t['bytes_accessed'] / GIB:.2f} GiB accessed (scanned blocks counted in full)",
      f"model per chip per step: {r['model']['total_flops'] / 1e12:.3f} TFLOP (DiT 6·N·tokens "
      f"{r['model']['dit_flops'] / 1e12:.3f} + DC-AE encoder "
      f"{r['model']['encoder_flops'] / 1e12:.3f}); compiled / model = "
      f"{r['compiled_over_model_flops']:.2f}",
      *_breakdown_lines(t),
      f"collectives per chip per step: {collectives or 'none'}",
      f"compile: train step {t['compile_seconds']:.1f} s, sampler "
      f"{r['sampler_step']['compile_seconds']:.1f} s",
      f"roofline: {r['roofline']['seconds'] * 1e3:.1f} ms per step ({r['roofline']['bound']}-bound"
      f" at {r['roofline']['peak_bf16_tflops']:.0f} TFLOP/s bf16, "
      f"{r['roofline']['hbm_gbps']:.0f} GB/s), "
      f"{r['roofline']['images_per_second_per_chip']:.2f} images/s per chip",
  ]
  return "\n".join(lines)


def _breakdown_lines(t: dict) -> list:
  """Where the step's FLOPs and bytes go, by kind of kernel: the whole depth, one block, the
  rest (a model of 3 blocks or more); the kernels' sum beside XLA's totals."""
  whole, split = t["by_kind"], t.get("by_kind_per_block")
  total = {f: sum(k[f] for k in whole.values()) for f in ("flops", "bytes", "on_chip_bytes")}
  lines = [
      f"by kind (kernels costed from the HLO: {total['flops'] / 1e12:.3f} TFLOP, "
      f"{total['bytes'] / GIB:.2f} GiB, of which {total['on_chip_bytes'] / GIB:.2f} GiB in "
      "on-chip memory): TFLOP, GiB whole" + (" | one block | the rest" if split else "")
  ]
  cost = lambda k, width: f"{k['flops'] / 1e12:{width}.3f} {k['bytes'] / GIB:{width}.2f}"
  for kind in sorted(whole, key=lambda k: -whole[k]["bytes"]):
    if whole[kind]["bytes"] or whole[kind]["flops"]:
      parts = [cost(whole[kind], 9)]
      if split:
        parts += [cost(split["block"][kind], 8), cost(split["rest"][kind], 8)]
      lines.append(f"  {kind:<12} " + " | ".join(parts))
  return lines


def one_chip_config(config):
  """A copy of `config` on a mesh of one chip: the sampler report's."""
  one = copy.deepcopy(config)
  one.mesh.update({axis: 1 for axis in one.mesh})
  return one


def sampler_report(config, pod, devices, stage: str, image: int) -> dict:
  """Everything `linearsr compile --sampler_image` prints: the sampler for one image×image
  output on the first chip of `devices`."""
  from linearsr_jax.aot import step_compile
  from linearsr_jax.train.loop import Run

  one = one_chip_config(config)
  run = Run(one, os.devnull, load_weights=False, devices=devices[:1])
  sampler = one.diffusion.sampler
  head = {
      "topology": pod.name, "platform": devices[0].platform, "chips": 1, "stage": stage,
      "image": image, "experts": one.stages[stage].num_experts, "solver": sampler.solver,
      "steps": sampler.steps, "guidance_scale": sampler.guidance_scale,
      "hbm_bytes": pod.chip.hbm_gib * GIB, "peak_bf16_tflops": pod.chip.peak_bf16_tflops,
      "hbm_gbps": pod.chip.hbm_gbps, "paper_seconds": PAPER_SECONDS
  }
  try:
    stats = step_compile.sampler_stats(run, stage, image)
  except step_compile.DoesNotFit as e:
    return dict(head, fits=False, required_bytes=e.required, available_bytes=e.available,
                compiler=str(e))
  for part in ("forward", "sampling"):
    bound = step_compile.roofline(pod, stats[part]["flops"], stats[part]["bytes_accessed"], 1)
    stats[part]["roofline"] = {"seconds": bound.seconds, "bound": bound.bound}
  return dict(head, **stats, fits=stats["sampling"]["memory"]["total"] <= head["hbm_bytes"])


def format_sampler_report(r: dict) -> str:
  guidance = (f"guidance {r['guidance_scale']:g} (conditional and null passes in one batch of 2)"
              if r["guidance_scale"] != 1.0 else "no guidance")
  lines = [
      f"{r['topology']}, one chip ({r['platform']}): the sampler for one {r['image']}² image, "
      f"stage {r['stage']} ({r['experts']} expert(s)), {r['solver']} {r['steps']} steps, "
      f"{guidance}"
  ]
  if "sampling" not in r:
    return "\n".join(lines + [f"DOES NOT FIT: the TPU compiler says: {r['compiler']}"])
  what = {
      "forward": "one network evaluation",
      "sampling": f"whole sampling ({r['evaluations']} evaluations, encode, decode)"
  }
  for part, name in what.items():
    p = r[part]
    lines.append(
        f"{name}: memory {p['memory']['total'] / GIB:.2f} of {r['hbm_bytes'] / GIB:.0f} GiB, "
        f"{p['flops'] / 1e12:.3f} TFLOP, {p['bytes_accessed'] / GIB:.2f} GiB accessed, roofline "
        f"{p['roofline']['seconds'] * 1e3:.1f} ms ({p['roofline']['bound']}-bound at "
        f"{r['peak_bf16_tflops']:.0f} TFLOP/s bf16, {r['hbm_gbps']:.0f} GB/s); paper "
        f"{r['paper_seconds'][part] * 1e3:.0f} ms")
  lines.append(f"of which the autoencoder: encode {r['encode']['flops'] / 1e12:.3f} TFLOP, decode "
               f"{r['decode']['flops'] / 1e12:.3f} TFLOP (loop over steps counted in full: the "
               f"forward times the evaluations)")
  if not r["fits"]:
    lines.append("DOES NOT FIT one chip")
  return "\n".join(lines)


def _batch_unit(config, mesh, stage: str) -> int:
  """The smallest global batch the stage splits without padding: each expert's share of the
  batch is split over the batch shards that run it. Those are all of them, or, where the mesh's
  expert axis shards the experts (its size divides their number), one expert group's."""
  from linearsr_jax import sharding

  experts, groups = config.stages[stage].num_experts, mesh.shape["expert"]
  unit = experts * sharding.batch_shards(mesh, [tuple(r) for r in config.sharding_rules])
  return unit // groups if experts % groups == 0 else unit


def _compile_train_step(config, devices, stage: str, batch_size: int):
  """(per-chip bytes of the train step at `batch_size`, (compiled step, compile seconds) or
  None when the compiler refused it, the bytes it said it has then or None). One compile: the
  scanned program's memory is already the whole model's."""
  from linearsr_jax.aot import hlo_stats, step_compile
  from linearsr_jax.train.loop import Run

  config.data.batch_size = batch_size
  run = Run(config, os.devnull, load_weights=False, devices=devices)
  try:
    compiled = step_compile.compile_train_step(run, stage, batch_size)
  except step_compile.DoesNotFit as e:
    return e.required, None, e.available
  return hlo_stats.stats(compiled[0])["memory"]["total"], compiled, None


def _crossing(need: dict, hbm: float, a: int, b: int) -> int:
  """The multiple (rounded down) where the line through the measured bytes at multiples a < b
  reaches `hbm` (twice b when the line does not rise)."""
  slope = (need[b] - need[a]) / (b - a)
  return a + int((hbm - need[a]) // slope) if slope > 0 else 2 * b


def find_batch(config, pod, devices, stage: str, log=print) -> tuple[int, dict]:
  """The largest multiple of the batch unit whose train step fits, and its report.

  Memory is close to affine in the batch, so each probe is where the line through the two
  latest measurements reaches the HBM (a secant search, starting from one and two units),
  kept strictly between the largest fitting and the smallest failing multiple so that every
  compile narrows them. Where the first extrapolation is off (XLA schedules a large batch
  differently: 15 % at 150 units for sana600m on v5e-64), it settles in two or three more
  compiles, where bisection takes seven.
  """
  from linearsr_jax import config_check, sharding
  config_check.mesh_sizes(config, len(devices))  # a clear error first: no Run has checked it
  unit = _batch_unit(config, sharding.make_mesh(dict(config.mesh), devices), stage)
  hbm, need, fit = pod.chip.hbm_gib * GIB, {}, {}
  largest = {}  # the largest fitting batch's compiled step, which the report reuses
  limit = [hbm]  # what the secant aims at: less once the compiler says it keeps some HBM

  def fits(multiple) -> bool:
    if multiple not in need:
      need[multiple], compiled, available = _compile_train_step(config, devices, stage,
                                                                unit * multiple)
      limit[0] = min(limit[0], available or hbm)
      # The compiler may refuse a program under the chip's HBM: it keeps some for itself.
      fit[multiple] = compiled is not None and need[multiple] <= hbm
      if fit[multiple] and multiple > largest.get("multiple", 0):
        largest.update(multiple=multiple, compiled=compiled)
      took = (f"compiled in {compiled[1]:.0f} s" if compiled else "the compiler refused it")
      log(f"batch {unit * multiple}: {need[multiple] / GIB:.2f} GiB "
          f"({'fits' if fit[multiple] else 'too large'}, {took})")
    return fit[multiple]

  if not fits(1):
    return 0, report(config, pod, devices, stage, unit)
  lo, hi = (2, None) if fits(2) else (1, 2)
  last = [1, 2]  # the two latest measurements: the secant through them
  while hi is None or hi - lo > 1:
    # An unreadable refusal has no size: bisect until two sizes are known again.
    secant = all(math.isfinite(need[m]) for m in last)
    probe = max(
        lo + 1,
        _crossing(need, limit[0], *sorted(last)) if secant or hi is None else (lo + hi) // 2)
    probe = probe if hi is None else min(probe, hi - 1)
    if fits(probe):
      lo = probe
    else:
      hi = probe
    last = [last[1], probe]
  return unit * lo, report(config, pod, devices, stage, unit * lo, largest["compiled"])


def _write(result: dict, out):
  if out:
    from linearsr_jax.atomic import atomic_file
    with atomic_file(out, "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)


def run(args) -> int:
  from linearsr_jax.config_check import stage_names
  from linearsr_jax.commands.config_flags import parse_flags

  own, rest = _own_flags(args.flags)
  pod, pod_devices = parse_topology(own.topology)
  config, _ = parse_flags(rest, command="compile")
  stage = own.stage or stage_names(config)[-1]
  if stage not in config.stages:
    raise UserError(f"--stage {stage}: the config has stages {', '.join(config.stages)}")
  devices = pod_devices()
  if own.sampler_image:
    result = sampler_report(config, pod, devices, stage, own.sampler_image)
    print(format_sampler_report(result))
    _write(result, own.out)
    if not result["fits"]:
      print(
          f"linearsr: sampling one {own.sampler_image}² image does not fit one "
          f"{pod.chip.generation} chip", file=sys.stderr)
    return 0 if result["fits"] else 1
  if own.find_batch:
    batch, result = find_batch(config, pod, devices, stage,
                               log=lambda m: print(m, file=sys.stderr, flush=True))
    if not batch:
      raise UserError(f"not even the smallest batch fits on {pod.name}")
    result["largest_batch"] = batch
  else:
    result = report(config, pod, devices, stage, config.data.batch_size)
  print(format_report(result))
  _write(result, own.out)
  if not result["fits"]:
    # Against what the compiler said it has, when it refused the program.
    available = result.get("available_bytes", result["hbm_bytes"])
    over = (_required_bytes(result) - available) / GIB
    print(
        f"linearsr: the train step does not fit: {over:.2f} GiB per chip over the "
        f"{available / GIB:.2f} GiB a {pod.chip.generation} chip has for it", file=sys.stderr)
    return 1
  return 0
