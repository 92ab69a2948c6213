"""`linearsr demo`: the whole system on the embedded photographs, as plain CLI calls.

1. `linearsr train` with configs/tiny.py: stage 1 until ESGF finds the knee, then 4 SNR
   experts branched from the knee checkpoint;
2. the held-out photographs (never trained on) as LR/HR pairs;
3. `linearsr eval` of bicubic and of the trained model on them;
4. `linearsr upscale` of one held-out photo and an LR | bicubic | ours | HR grid;
5. report.md linking all of it.
"""

from pathlib import Path

import numpy as np

from linearsr_jax import configs
from linearsr_jax.atomic import atomic_file
from linearsr_jax.errors import UserError
from linearsr_jax.train.run_dir import RunDir, read_json

EVAL_METRICS = "psnr_y,ssim_y,lpips_alex"


def add_arguments(parser):
  parser.add_argument("--workdir", default="runs/demo", help="where everything goes")
  parser.add_argument("--config", default=str(Path(configs.__file__).parent / "tiny.py"))
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override for training, e.g. --set stages.pretrain.max_steps=50")
  parser.add_argument("--heldout_crop", type=int, default=0,
                      help="center-crop the held-out photos to this HR size (0: whole photos)")


def _cli(*argv) -> int:
  from linearsr_jax.cli import main
  print(f"\n$ linearsr {' '.join(map(str, argv))}", flush=True)
  return main([str(a) for a in argv])


def write_heldout_pairs(config, out: Path) -> list:
  """The eval photographs as HR/LR PNGs (degraded once, seeded), for eval and upscale."""
  import functools

  from linearsr_jax.data import pipeline
  from linearsr_jax.data.image_io import write_image
  from linearsr_jax.models.tags import tokenize_tags

  tokenize = functools.partial(tokenize_tags, vocab_size=config.tags.vocab_size,
                               max_tokens=config.tags.max_tokens)
  data = config.data
  names = []
  for example in pipeline.make_eval_examples(pipeline.make_source(data, "eval"), data, tokenize):
    for kind in ("hr", "lr"):
      write_image(out / kind.upper() / f"{example['name']}.png", (example[kind] + 1) / 2)
    names.append(example["name"])
  return names


def textured_window(image: np.ndarray, size: int) -> tuple[int, int]:
  """Top-left corner of the size × size window of `image` with the most gradient energy:
  where a sharper reconstruction than bicubic's would show."""
  luma = np.asarray(image, np.float64)[..., :3].mean(-1)
  energy = np.zeros_like(luma)
  energy[:, 1:] += np.diff(luma, axis=1) ** 2
  energy[1:, :] += np.diff(luma, axis=0) ** 2
  table = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
  sums = (table[size:, size:] - table[:-size, size:] - table[size:, :-size]
          + table[:-size, :-size])
  top, left = np.unravel_index(np.argmax(sums), sums.shape)
  return int(top), int(left)


def write_grid(lr_path, sr_path, hr_path, out_path, scale):
  """LR (nearest) | bicubic | ours | HR, side by side under a label strip, and below them the
  same most-textured window of each, enlarged (nearest) to the panel's width; a red box marks
  the window on the full panels."""
  from PIL import Image, ImageDraw

  from linearsr_jax.data.degradations import imresize_bicubic
  from linearsr_jax.data.image_io import read_image, to_uint8, write_image

  lr, sr, hr = read_image(lr_path), read_image(sr_path), read_image(hr_path)
  h, w = hr.shape[:2]
  panels = [np.repeat(np.repeat(lr, scale, 0), scale, 1)[:h, :w],
            np.clip(imresize_bicubic(lr, h, w), 0, 1), sr[:h, :w], hr]
  size = max(8, min(h, w) // 4)
  top, left = textured_window(hr, size)
  zoom = max(1, w // size)
  zoomed = [np.repeat(np.repeat(p[top:top + size, left:left + size], zoom, 0), zoom, 1)
            for p in panels]
  full = Image.fromarray(to_uint8(np.concatenate(panels, axis=1)))
  detail = Image.fromarray(to_uint8(np.concatenate(
      [np.pad(z, ((0, 0), (0, w - z.shape[1]), (0, 0)), constant_values=1.0) for z in zoomed],
      axis=1)))
  canvas = Image.new("RGB", (full.width, 20 + full.height + detail.height), "white")
  canvas.paste(full, (0, 20))
  canvas.paste(detail, (0, 20 + full.height))
  draw = ImageDraw.Draw(canvas)
  for i, label in enumerate(["LR (nearest)", "bicubic", "LinearSR (ours)", "HR"]):
    draw.text((i * w + 6, 4), label, fill="black")
    draw.rectangle((i * w + left, 20 + top, i * w + left + size - 1, 20 + top + size - 1),
                   outline="red")
  write_image(out_path, np.asarray(canvas))


def run(args) -> int:
  from linearsr_jax.train.cli_train import parse_flags

  workdir = Path(args.workdir)
  overrides = [f"--config.{kv}" for kv in args.set]
  train_dir = workdir / "train"
  if _cli("train", "--config", args.config, "--workdir", train_dir, *overrides):
    raise UserError("training failed")
  config, _ = parse_flags(["--config", args.config, "--workdir", str(train_dir), *overrides])
  config.data.eval.crop_size = args.heldout_crop
  heldout = workdir / "heldout"
  names = write_heldout_pairs(config, heldout)
  scale = config.data.scale
  status = _cli("eval", "--hr_dir", heldout / "HR", "--lr_dir", heldout / "LR", "--scale", scale,
                "--checkpoint", train_dir, "--metrics", EVAL_METRICS,
                "--out", workdir / "eval" / "ours")
  photo = names[0]
  if _cli("upscale", heldout / "LR" / f"{photo}.png", "--checkpoint", train_dir,
          "--out", workdir / "upscale", "--overwrite"):
    raise UserError("upscaling the held-out photo failed")
  sr_path = workdir / "upscale" / f"{photo}_x{scale}.png"
  grid_path = workdir / f"grid_{photo}.png"
  write_grid(heldout / "LR" / f"{photo}.png", sr_path, heldout / "HR" / f"{photo}.png", grid_path,
             scale)
  report = write_report(workdir, train_dir, grid_path, names)
  print(report["summary"])
  return status


def write_report(workdir: Path, train_dir: Path, grid_path: Path, names) -> dict:
  train_run = RunDir(train_dir)
  run_info = read_json(train_run.run_json)["stages"]
  summary = read_json(workdir / "eval" / "ours" / "summary.json")
  ours, bicubic = summary["mean"], summary["baseline"]["mean"]
  stage_lines = []
  for stage in run_info:
    origin = read_json(train_run.stage(stage["name"]).stage_json)["init_from"]
    start = (f"branched from {origin['stage']} step {origin['knee_step']}"
             if origin["stage"] else "from scratch")
    stage_lines.append(f"| {stage['name']} | {start} | {stage['knee_step']} | "
                       f"{'ESGF knee' if stage['fired'] else 'step budget'} | "
                       f"![curves]({stage['name']}_knee.png) |")
  headline = (f"held-out photos ({', '.join(names)}): PSNR-Y {ours['psnr_y']:.2f} dB "
              f"(bicubic {bicubic['psnr_y']:.2f}), SSIM-Y {ours['ssim_y']:.4f} "
              f"(bicubic {bicubic['ssim_y']:.4f}), LPIPS {ours['lpips_alex']:.4f} "
              f"(bicubic {bicubic['lpips_alex']:.4f})")
  lines = [
      "# LinearSR demo", "",
      "Tiny config, trained from scratch on the scikit-image photographs; "
      f"{', '.join(names)} held out.", "",
      "## Training stages", "",
      "| stage | start | next stage starts from step | ended by | curves |",
      "|---|---|---|---|---|", *stage_lines, "",
      "## Held-out evaluation", "",
      "| method | PSNR-Y (dB) ↑ | SSIM-Y ↑ | LPIPS-Alex ↓ |", "|---|---|---|---|",
      *(f"| {label} | {m['psnr_y']:.2f} | {m['ssim_y']:.4f} | {m['lpips_alex']:.4f} |"
        for label, m in (("bicubic", bicubic), ("LinearSR (tiny, this run)", ours))), "",
      "Per-image scores, bicubic's beside ours: [eval/ours/per_image.csv]"
      "(eval/ours/per_image.csv).", "",
      "## Upscaled held-out photo", "", f"![grid]({grid_path.name})", "",
      "LR (nearest) | bicubic | ours | HR; below, the most textured window of each, enlarged.",
      ""]
  import shutil
  for stage in run_info:
    shutil.copyfile(train_run.stage(stage["name"]).knee_png, workdir / f"{stage['name']}_knee.png")
  with atomic_file(workdir / "report.md", "w") as f:
    f.write("\n".join(lines))
  summary = (f"\nDemo finished. Report: {workdir / 'report.md'}\n"
             f"  knee: " + ", ".join(f"{s['name']} -> step {s['knee_step']}"
                                     f" ({'ESGF' if s['fired'] else 'budget'})"
                                     for s in run_info) + "\n"
             f"  {headline}\n  grid: {grid_path}\n  TensorBoard: tensorboard --logdir {train_dir}")
  return {"summary": summary, "headline": headline}
