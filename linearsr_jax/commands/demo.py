"""`linearsr demo`: the whole system on real photographs, as plain CLI calls.

1. the photographs split three ways (demo_photos.py): train, validation (ESGF's curves), test;
2. `linearsr train` with configs/demo.py: stage 1 until ESGF finds the knee on the validation
   photos, then 4 SNR experts branched from the knee checkpoint; with --distill, then a
   one-step student of the experts (a distill stage; the teacher samples 4 steps with guidance);
3. the test photographs, never seen by training or by the knee, as LR/HR pairs twice: classic
   bicubic ×4 LR, and the degradation the model trained for (its bicubic share left out);
4. `linearsr eval` of each (the bicubic row beside the model's), `linearsr upscale` of one test
   photo per kind and an LR | bicubic | ours | HR grid (ours: the experts, also with --distill);
   with --distill, the teacher's and the student's rows (distill_rows.py) and an LR | bicubic |
   teacher | student | HR grid per kind;
5. report.md linking all of it.
"""

from pathlib import Path

import numpy as np

from linearsr_jax import configs
from linearsr_jax.atomic import atomic_file, write_atomically
from linearsr_jax.commands import distill_rows
from linearsr_jax.commands.demo_photos import split_photos
from linearsr_jax.errors import UserError
from linearsr_jax.run.run_dir import RunDir, read_json

EVAL_METRICS = "psnr_y,ssim_y,lpips_alex"
# The two test degradations: classic bicubic ×4, and the training degradation without its
# bicubic share.
TEST_KINDS = {"bicubic": "bicubic ×4 LR", "realistic": "degraded LR (the training degradation)"}


def add_arguments(parser):
  parser.add_argument("--workdir", default="runs/demo", help="where everything goes")
  parser.add_argument("--config", default=str(Path(configs.__file__).parent / "demo.py"))
  parser.add_argument(
      "--photos", metavar="DIR",
      help="train on this folder's photographs instead of the embedded ones "
      "(split by name: a fifth for test, a tenth for validation)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override for training, e.g. --set stages.pretrain.max_steps=50")
  parser.add_argument("--heldout_crop", type=int, default=0,
                      help="center-crop the test photos to this HR size (0: whole photos)")
  parser.add_argument(
      "--distill", action="store_true",
      help="then a distill stage: a one-step student of the experts, whose teacher samples "
      f"{distill_rows.TEACHER_SAMPLER['diffusion.sampler.steps']} steps with guidance "
      f"{distill_rows.TEACHER_SAMPLER['diffusion.sampler.guidance_scale']:g}; the report adds "
      "the teacher's and the student's rows and grids")


def _cli(*argv) -> int:
  from linearsr_jax.commands.cli import main
  print(f"\n$ linearsr {' '.join(map(str, argv))}", flush=True)
  return main([str(a) for a in argv])


def write_test_pairs(config, photos: Path, out: Path, kind: str) -> list:
  """The test photographs as HR/ and LR/ PNGs (degraded once, seeded, as `kind` says), each LR
  image with its tag sidecar; returns the file names."""
  from linearsr_jax.data import eval_set, sources

  data = config.data.copy_and_resolve_references()
  if kind == "bicubic":
    data.degradation.mode = "bicubic"
  data.degradation.bicubic_prob = 0.0  # the degraded pairs are all degraded
  source = sources.FolderSource(photos)
  names = eval_set.write_eval_pairs(source, data, out)
  for path, name in zip(source.paths, names):
    tags = source.tag_source(path)
    if tags:
      write_atomically((out / "LR" / name).with_suffix(".txt"), ", ".join(tags).encode())
  return names


def textured_window(image: np.ndarray, size: int) -> tuple[int, int]:
  """Top-left corner of the size × size window of `image` with the most gradient energy:
  where a sharper reconstruction than bicubic's would show."""
  luma = np.asarray(image, np.float64)[..., :3].mean(-1)
  energy = np.zeros_like(luma)
  energy[:, 1:] += np.diff(luma, axis=1)**2
  energy[1:, :] += np.diff(luma, axis=0)**2
  table = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
  sums = (table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size])
  top, left = np.unravel_index(np.argmax(sums), sums.shape)
  return int(top), int(left)


def write_grid(lr, outputs: dict, hr, out_path, scale):
  """LR (nearest) | bicubic | each of `outputs` ({label: SR image}) | HR, side by side under a
  label strip, and below them the same most-textured window of each, enlarged (nearest) to the
  panel's width; a red box marks the window on the full panels. Images in [0, 1]."""
  from PIL import Image, ImageDraw

  from linearsr_jax.resize import imresize_bicubic
  from linearsr_jax.data.image_io import to_uint8, write_image

  h, w = hr.shape[:2]
  panels = [
      np.repeat(np.repeat(lr, scale, 0), scale, 1)[:h, :w],
      np.clip(imresize_bicubic(lr, h, w), 0, 1), *(sr[:h, :w] for sr in outputs.values()), hr
  ]
  labels = ["LR (nearest)", "bicubic", *outputs, "HR"]
  size = max(8, min(h, w) // 4)
  top, left = textured_window(hr, size)
  zoom = max(1, w // size)
  zoomed = [
      np.repeat(np.repeat(p[top:top + size, left:left + size], zoom, 0), zoom, 1) for p in panels
  ]
  full = Image.fromarray(to_uint8(np.concatenate(panels, axis=1)))
  detail = Image.fromarray(
      to_uint8(
          np.concatenate([
              np.pad(z, ((0, 0), (0, w - z.shape[1]), (0, 0)), constant_values=1.0) for z in zoomed
          ], axis=1)))
  canvas = Image.new("RGB", (full.width, 20 + full.height + detail.height), "white")
  canvas.paste(full, (0, 20))
  canvas.paste(detail, (0, 20 + full.height))
  draw = ImageDraw.Draw(canvas)
  for i, label in enumerate(labels):
    draw.text((i * w + 6, 4), label, fill="black")
    draw.rectangle((i * w + left, 20 + top, i * w + left + size - 1, 20 + top + size - 1),
                   outline="red")
  write_image(out_path, np.asarray(canvas))


def run(args) -> int:
  from linearsr_jax.commands.config_flags import parse_flags
  from linearsr_jax.data.image_io import read_image

  workdir, train_dir = Path(args.workdir), Path(args.workdir) / "train"
  config, _ = parse_flags([
      "--config", args.config, "--workdir",
      str(train_dir), *(f"--config.{kv}" for kv in args.set)
  ], command="demo")
  photos = workdir / "photos"
  split = split_photos(photos, args.photos, seed=config.seed, min_size=config.data.crop_size)
  # The folders (and the distill stage) first, so that a --set of the user's may still
  # override them.
  distill = {"stage_order": f"{config.stage_order},distill", **distill_rows.TEACHER_SAMPLER}
  overrides = [
      "--config.data.source.kind=folder", f"--config.data.source.path={photos / 'train'}",
      "--config.data.eval_source.kind=folder",
      f"--config.data.eval_source.path={photos / 'validation'}",
      *(f"--config.{k}={v}" for k, v in (distill.items() if args.distill else ())),
      *(f"--config.{kv}" for kv in args.set)
  ]
  if _cli("train", "--config", args.config, "--workdir", train_dir, *overrides):
    raise UserError("training failed")
  config.data.eval.crop_size = args.heldout_crop
  # With a student, the rows and grids of "ours" stay the experts'; the student has its own.
  stage = ["--stage", distill_rows.teacher_and_student(train_dir)[0][1]] if args.distill else []
  scale, grids, students = config.data.scale, {}, {}
  for kind in TEST_KINDS:
    pairs = workdir / "test" / kind
    names = write_test_pairs(config, photos / "test", pairs, kind)
    if _cli("eval", "--hr_dir", pairs / "HR", "--lr_dir", pairs / "LR", "--scale", scale,
            "--checkpoint", train_dir, *stage, "--metrics", EVAL_METRICS, "--no_progress", "--out",
            workdir / "eval" / kind):
      raise UserError(f"evaluating the {kind} test pairs failed")
    photo = names[0]
    if _cli("upscale", pairs / "LR" / photo, "--checkpoint", train_dir, *stage, "--color_fix",
            "none", "--out", workdir / "upscale" / kind, "--overwrite", "--no_progress"):
      raise UserError(f"upscaling the {kind} test photo failed")
    stem = Path(photo).stem
    grids[kind] = workdir / f"grid_{kind}_{stem}.png"
    lr, hr = read_image(pairs / "LR" / photo), read_image(pairs / "HR" / photo)
    ours = read_image(workdir / "upscale" / kind / f"{stem}_x{scale}.png")
    write_grid(lr, {"LinearSR (ours)": ours}, hr, grids[kind], scale)
    if args.distill:
      students[kind] = student_section(workdir, pairs, names, kind, scale)
  report = write_report(workdir, train_dir, grids, split, students)
  print(report["summary"])
  return 0


def student_section(workdir: Path, pairs: Path, names: list, kind: str, scale: int) -> dict:
  """The distill stage's three rows on one kind of test pairs (distill_rows.py), and a grid of
  its first photo with the teacher's N-step and the student's 1-step output:
  {"rows": [Row], "grid": path}."""
  from linearsr_jax.data.image_io import read_image
  from linearsr_jax.data.tag_sources import SidecarTags

  images = {
      name: (read_image(pairs / "LR" / name), read_image(pairs / "HR" / name),
             SidecarTags()(pairs / "LR" / name)) for name in names
  }
  rows = distill_rows.distill_rows(workdir / "train", images)
  lr, hr, _ = images[names[0]]
  grid = workdir / f"grid_distill_{kind}_{Path(names[0]).stem}.png"
  teacher, _, student = rows
  write_grid(lr, {r.label: r.outputs[names[0]] for r in (teacher, student)}, hr, grid, scale)
  return {"rows": rows, "grid": grid}


def _verdict(ours: dict, bicubic: dict) -> str:
  return (f"PSNR-Y {ours['psnr_y'] - bicubic['psnr_y']:+.2f} dB, "
          f"LPIPS {ours['lpips_alex'] - bicubic['lpips_alex']:+.4f} against bicubic")


def branch_check(train_run: RunDir, origin: dict) -> str:
  """Which step a stage branched from, and whether it is the knee ESGF (or the budget rule)
  chose for the stage before it, from that stage's result.json; why not when it is not."""
  result = read_json(train_run.stage(origin["stage"]).result_json)
  chosen = result.get("chosen_step", result["knee_step"])  # absent: a run from before it
  if origin["knee_step"] == chosen:
    return (f"branched from {origin['stage']} step {origin['knee_step']}, the knee "
            f"{origin['stage']} chose and reports")
  return (f"branched from {origin['stage']} step {origin['knee_step']}, not the knee "
          f"{chosen} that stage chose: {result['reason']}")


def write_report(workdir: Path, train_dir: Path, grids: dict, split: dict, students: dict) -> dict:
  import shutil

  train_run = RunDir(train_dir)
  run_info = read_json(train_run.run_json)["stages"]
  stage_lines, branches = [], []
  for stage in run_info:
    origin = read_json(train_run.stage(stage["name"]).stage_json)["init_from"]
    start = (f"branched from {origin['stage']} step {origin['knee_step']}"
             if origin["stage"] else "from scratch")
    if origin["stage"]:
      branches.append(f"{stage['name']} {branch_check(train_run, origin)}")
    stage_lines.append(f"| {stage['name']} | {start} | {stage['knee_step']} | "
                       f"{'ESGF knee' if stage['fired'] else 'step budget'} | "
                       f"![curves]({stage['name']}_knee.png) |")
  lines = [
      "# LinearSR demo", "",
      f"Trained from scratch on {len(split['train'])} photographs; ESGF's curves measured on "
      f"{', '.join(split['validation'])}; tested on {', '.join(split['test'])}, which neither "
      "training nor the knee saw.", "", "## Training stages", "",
      "| stage | start | next stage starts from step | ended by | curves |",
      "|---|---|---|---|---|", *stage_lines, "", *(f"- {line}" for line in branches), ""
  ]
  headlines = []
  for kind, title in TEST_KINDS.items():
    summary = read_json(workdir / "eval" / kind / "summary.json")
    ours, bicubic = summary["mean"], summary["baseline"]["mean"]
    headlines.append(f"{title}: {_verdict(ours, bicubic)}")
    lines += [
        f"## Test photographs, {title}", "", "| method | PSNR-Y (dB) ↑ | SSIM-Y ↑ | LPIPS-Alex ↓ |",
        "|---|---|---|---|",
        *(f"| {label} | {m['psnr_y']:.2f} | {m['ssim_y']:.4f} | {m['lpips_alex']:.4f} |"
          for label, m in (("bicubic", bicubic), ("LinearSR (this run)", ours))), "",
        f"{_verdict(ours, bicubic)}. Per image, bicubic's beside ours: "
        f"[eval/{kind}/per_image.csv](eval/{kind}/per_image.csv).", "",
        f"![grid]({grids[kind].name})", "",
        "LR (nearest) | bicubic | ours | HR; below, the most textured window of each, enlarged.", ""
    ]
    if kind in students:
      section = students[kind]
      lines += [
          f"## One step: the distilled student, {title}", "",
          "The teacher (the experts) at its sampler's steps with guidance and at 1 step, and "
          "the distill stage's student at its 1 step; no colour fix. PSNR vs teacher: against "
          "the teacher's N-step output; time per image as a ratio to the teacher's.", "",
          *distill_rows.markdown(section["rows"]), "", f"![grid]({section['grid'].name})", "",
          "LR (nearest) | bicubic | teacher | student | HR; below, the most textured window "
          "of each, enlarged.", ""
      ]
  for stage in run_info:
    shutil.copyfile(train_run.stage(stage["name"]).knee_png, workdir / f"{stage['name']}_knee.png")
  with atomic_file(workdir / "report.md", "w") as f:
    f.write("\n".join(lines))
  summary = (f"\nDemo finished. Report: {workdir / 'report.md'}\n"
             f"  knee: " + ", ".join(f"{s['name']} -> step {s['knee_step']}"
                                     f" ({'ESGF' if s['fired'] else 'budget'})" for s in run_info) +
             "\n" + "".join(f"  {line}\n" for line in branches) +
             "".join(f"  {line}\n" for line in headlines) +
             f"  grids: {', '.join(str(g) for g in grids.values())}\n"
             f"  TensorBoard: tensorboard --logdir {train_dir}")
  return {"summary": summary, "headlines": headlines}
