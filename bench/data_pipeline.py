"""Input pipeline throughput: training images/s at one crop size with 0, 1, 2 grain workers.

Source: the scikit-image demo photographs; each image is cropped, flipped, degraded with the
Real-ESRGAN model (or bicubic) and batched. The first batches (worker start-up) are timed
separately. Prints a markdown table.

  .venv/bin/python bench/data_pipeline.py [--crop 256] [--batch 8] [--batches 16]
"""

import argparse
import gc
import os
import sys
import time

import numpy as np

from common import markdown_table
from linearsr_jax.data import pipeline

TAG_LENGTH = 16


def tokenize(tags):
  """Stand-in for the tag encoder: fixed-length ids and mask (its cost is negligible)."""
  ids = np.zeros(TAG_LENGTH, np.int32)
  mask = np.zeros(TAG_LENGTH, bool)
  mask[:min(len(tags), TAG_LENGTH)] = True
  return ids, mask


def measure(crop, batch, batches, workers, mode):
  config = pipeline.default_config()
  config.crop_size, config.batch_size, config.num_workers = crop, batch, workers
  config.degradation.mode = mode
  source = pipeline.make_source(config)
  iterator = iter(pipeline.make_train_dataset(source, config, tokenize, 0, 1))
  start = time.perf_counter()
  for _ in range(2):  # start-up: worker processes, imports, first decodes
    next(iterator)
  startup = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = time.perf_counter() - start
  if hasattr(iterator, "close"):
    iterator.close()
  del iterator
  gc.collect()
  return startup, batches * batch / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--crop", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--batches", type=int, default=16)
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--modes", nargs="+", default=["realesrgan", "bicubic"])
  args = parser.parse_args()
  rows = []
  for mode in args.modes:
    for workers in args.workers:
      startup, rate = measure(args.crop, args.batch, args.batches, workers, mode)
      rows.append([mode, workers, f"{startup:.1f}", f"{rate:.1f}"])
      print(f"# {mode} workers={workers}: {rate:.1f} images/s", file=sys.stderr, flush=True)
  print(f"crop {args.crop} px (LR {args.crop // 4} px), batch {args.batch}, "
        f"{args.batches} timed batches after 2 warm-up batches, {os.cpu_count()} CPU cores\n")
  print(markdown_table(["degradation", "workers", "first 2 batches (s)", "images/s"], rows))


if __name__ == "__main__":
  main()
