"""The fixed evaluation pairs: every image of the eval source center-cropped (or whole), its LR
side synthesised with a seed of its own, so that every evaluation sees the same pixels;
batched by size for validation, or written as PNG pairs (`linearsr data degrade`, the demo)."""

import math

import numpy as np

from linearsr_jax.data import degradations
from linearsr_jax.data.pipeline import BATCH_KEYS, Tokenize, to_example


def _center_offset(image, height, width):
  return (image.shape[0] - height) // 2, (image.shape[1] - width) // 2


def _center(image, height, width):
  top, left = _center_offset(image, height, width)
  return image[top:top + height, left:left + width]


def eval_example(record, index, config, tokenize: Tokenize, align: int = 1) -> dict:
  """One fixed LR/HR pair: a center crop (eval.crop_size) or the full image, its HR side
  trimmed to a multiple of the scale and of `align` (the latent factor, e.g. 32 for a DC-AE);
  synthetic LR images are seeded by (eval.seed, index)."""
  s, c = config.scale, config.eval.crop_size
  step = math.lcm(s, align)
  if "lr" in record:
    lr_h, lr_w = record["lr"].shape[:2]
    lr_h, lr_w = (min(lr_h, c // s), min(lr_w, c // s)) if c else (lr_h, lr_w)
    lr_h, lr_w = lr_h - lr_h % (step // s), lr_w - lr_w % (step // s)
    top, left = _center_offset(record["lr"], lr_h, lr_w)
    lr = record["lr"][top:top + lr_h, left:left + lr_w]
    # The HR crop covers the same scene as the LR crop: its offset is the LR one times s.
    hr = record["hr"][top * s:(top + lr_h) * s, left * s:(left + lr_w) * s]
  else:
    hr = record["hr"]
    h, w = (min(hr.shape[0], c), min(hr.shape[1], c)) if c else hr.shape[:2]
    hr = np.ascontiguousarray(_center(hr, h - h % step, w - w % step))
    rng = np.random.default_rng([config.eval.seed, index])
    hr, lr = degradations.degrade_pair(hr, s, rng, config.degradation)
  example = to_example(hr, lr, record["tags"], tokenize)
  example["name"] = record["name"]
  return example


def make_eval_examples(source, config, tokenize: Tokenize, align: int = 1) -> list:
  """Every eval pair, computed once (the same pixels at every evaluation)."""
  return [eval_example(source[i], i, config, tokenize, align) for i in range(len(source))]


def write_eval_pairs(source, config, out) -> list:
  """Every eval pair of `source`, as eval_example makes it (seeded, center-cropped), written as
  PNGs to out/HR/ and out/LR/ under the image's name; returns the file names."""
  from pathlib import Path

  from linearsr_jax.data.image_io import write_image

  def no_tokens(tags):  # only the pixels are written
    del tags
    return np.zeros(0, np.int32), np.zeros(0, bool)

  names = []
  for index in range(len(source)):
    example = eval_example(source[index], index, config, no_tokens)
    name = Path(example["name"]).with_suffix(".png").as_posix()
    for key in ("hr", "lr"):
      write_image(Path(out) / key.upper() / name, (example[key] + 1) / 2)
    names.append(name)
  return names


def eval_batches(examples, batch_size):
  """Batches of consecutive same-size examples; 'name' becomes a list of names."""
  group = []
  for example in examples + [None]:
    if group and (example is None or len(group) == batch_size or
                  example["hr"].shape != group[0]["hr"].shape):
      batch = {k: np.stack([e[k] for e in group]) for k in BATCH_KEYS if k in group[0]}
      batch["name"] = [e["name"] for e in group]
      yield batch
      group = []
    if example is not None:
      group.append(example)
