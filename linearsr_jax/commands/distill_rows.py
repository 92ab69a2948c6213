"""The distilled student against its teacher on LR / HR pairs: the three rows that
bench/distill.py and `linearsr demo --distill` report.

- the teacher (the stage before the run's distill stage, or its `distill.teacher`) at its N
  sampler steps with its guidance, the teacher at 1 step without, the student at its 1 step;
- PSNR-Y / SSIM-Y / LPIPS (Alex) against HR; PSNR (RGB) against the teacher's N-step output
  (the same source draw, seed 0); seconds per image (the median of `repeats` calls after the
  one that compiles) and its ratio to the teacher's, in this process. No colour fix, so that
  the rows compare the models alone.
"""

import dataclasses
from pathlib import Path

import numpy as np

from linearsr_jax import config_check, run_config
from linearsr_jax.errors import UserError
from linearsr_jax.timing import median_seconds
from linearsr_jax.run.run_dir import RunDir

METRICS = ("psnr_y", "ssim_y", "lpips_alex")
HEADER = ("row", "PSNR-Y", "SSIM-Y", "LPIPS", "PSNR vs teacher", "s / image", "time / teacher's")
# The demo's teacher sampler: enough steps, and guidance, that its N-step output differs clearly
# from its 1-step output, so that the student has something to learn.
TEACHER_SAMPLER = {"diffusion.sampler.steps": 4, "diffusion.sampler.guidance_scale": 2.0}


@dataclasses.dataclass
class Row:
  label: str
  scores: dict  # metric -> mean over the images, against HR
  to_teacher: float | None  # mean PSNR (RGB) against the teacher's N-step output; its own: None
  seconds: float  # per image
  time_ratio: float  # seconds / the teacher's N-step seconds
  outputs: dict  # image name -> SR image

  def cells(self) -> list:
    return [
        self.label, *(f"{self.scores[m]:.3f}" for m in METRICS),
        "—" if self.to_teacher is None else f"{self.to_teacher:.2f}", f"{self.seconds:.3f}",
        f"{self.time_ratio:.3f}"
    ]


def teacher_and_student(train_dir: Path) -> tuple:
  """((teacher path, teacher stage), distill stage) of a run, the teacher as load_trained takes
  it: the run and the stage before its distill stage, or for a distill stage that comes first,
  config.distill.teacher's step directory (stage None)."""
  run = RunDir(train_dir)
  config = run_config.read(run)
  names = config_check.stage_names(config)
  distill = [i for i, n in enumerate(names) if config_check.stage_kind(config, n) == "distill"]
  if not distill:
    raise UserError(f"{train_dir}: no distill stage (stage_order {config.stage_order})")
  if distill[0] == 0:
    return (Path(config.distill.teacher), None), names[0]
  return (Path(train_dir), names[distill[0] - 1]), names[distill[0]]


def distill_rows(train_dir: Path, pairs: dict, repeats: int = 3) -> list:
  """The three Rows on `pairs`, {name: (LR image, HR image, tags)} with images in [0, 1]."""
  from linearsr_jax.evaluate.metrics import psnr, score_image
  from linearsr_jax.inference.trained import load_trained
  from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler

  (teacher_path, teacher_stage), student_stage = teacher_and_student(train_dir)
  teacher = load_trained(teacher_path, stage=teacher_stage)
  student = load_trained(train_dir, stage=student_stage)
  # The steps and guidance the student was trained on: its run's (a teacher of another run
  # has its own config).
  sampler = run_config.read(RunDir(train_dir)).diffusion.sampler
  settings = {
      f"teacher, {sampler.steps} steps, guidance {sampler.guidance_scale:g}":
          (teacher,
           UpscaleOptions(tile=512, steps=sampler.steps, color_fix="none",
                          guidance_scale=sampler.guidance_scale)),
      "teacher, 1 step": (teacher, UpscaleOptions(tile=512, steps=1, color_fix="none")),
      "student, 1 step": (student, UpscaleOptions(tile=512, color_fix="none")),
  }
  rows = []
  for label, (trained, options) in settings.items():
    upscaler = Upscaler(trained, options)
    conditions = {name: upscaler.condition(list(tags)) for name, (_, _, tags) in pairs.items()}
    run = lambda name: upscaler(pairs[name][0], conditions[name])
    outputs = {name: run(name) for name in pairs}  # and compiles
    seconds = float(
        np.mean([median_seconds(lambda n=name: run(n), repeats, warmup=0) for name in pairs]))
    scores = [score_image(outputs[name], hr, METRICS) for name, (_, hr, _) in pairs.items()]
    means = {m: float(np.mean([s[m] for s in scores])) for m in METRICS}
    teacher = rows[0] if rows else None  # the first row is the teacher at its N steps
    to_teacher = None if teacher is None else float(
        np.mean([psnr(outputs[n][None], teacher.outputs[n][None], space="rgb")[0] for n in pairs]))
    ratio = 1.0 if teacher is None else seconds / teacher.seconds
    rows.append(Row(label, means, to_teacher, seconds, ratio, outputs))
  return rows


def markdown(rows: list) -> list:
  """The rows as the lines of a markdown table."""
  return [
      "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER),
      *("| " + " | ".join(row.cells()) + " |" for row in rows)
  ]
