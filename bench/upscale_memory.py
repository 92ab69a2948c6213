"""Host memory of upscaling one large image: what one image costs beyond the model, per output.

  PYTHONPATH=<checkout> .venv/bin/python bench/upscale_memory.py [--sizes 2048x2048,4096x3072]

Each output size runs in its own process with the tiny config (random weights, 4 experts, the
config's sampler steps, 256 px LR tiles, wavelet colour fix): the sampler is compiled on one
tile, the peak-RSS mark is reset (/proc/self/clear_refs), then the image is upscaled and
written as PNG as `linearsr upscale` does. Columns: one float32 RGB copy of the output; the
peak of NumPy's allocations meanwhile (tracemalloc), and the same in float32 output copies; the
rise of the process's peak RSS over its RSS before the image (JAX's buffers and the PNG encoder's
included). Run it with PYTHONPATH at two checkouts to compare them.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_mib(field: str) -> float:
  status = Path("/proc/self/status").read_text()
  return int(re.search(rf"{field}:\s*(\d+) kB", status).group(1)) / 1024


def measure(height: int, width: int, tile: int) -> dict:
  import tracemalloc

  import numpy as np

  from upscale import tiny_trained
  from linearsr_jax.data.image_io import to_uint8, write_image
  from linearsr_jax.inference.upscale import UpscaleOptions, Upscaler

  trained, _ = tiny_trained()
  upscaler = Upscaler(trained, UpscaleOptions(tile=tile, overlap=tile // 4))
  scale = upscaler.scale
  rng = np.random.default_rng(0)
  lr = rng.random((height // scale, width // scale, 3), dtype=np.float32)
  upscaler(lr[:tile, :tile])  # compile the sampler for the tile shape
  Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
  before = _rss_mib("VmRSS")
  tracemalloc.start()
  with tempfile.TemporaryDirectory() as tmp:
    sr = upscaler(lr)
    sr = to_uint8(sr)  # as `linearsr upscale` does, before encoding
    write_image(Path(tmp) / "out.png", sr)
    del sr
  _, traced = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  copy = height * width * 3 * 4
  return dict(size=f"{width}x{height}", copy_mib=copy / 2**20, traced_mib=traced / 2**20,
              copies=traced / copy, rss_rise_mib=_rss_mib("VmHWM") - before)


def _child(size: str, tile: int, pythonpath: str) -> dict:
  width, height = map(int, size.split("x"))
  env = {
      **os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
      "PYTHONPATH": os.pathsep.join([pythonpath, str(REPO / "bench")])
  }
  proc = subprocess.run(
      [sys.executable, __file__, "--child",
       str(height), str(width),
       str(tile)], cwd=REPO, env=env, capture_output=True, text=True)
  if proc.returncode:
    return dict(size=size, error=(proc.stderr.strip().splitlines() or ["?"])[-1][:120])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="2048x2048,4096x3072", help="output WxH, comma-separated")
  parser.add_argument("--tile", type=int, default=256, help="LR tile")
  parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(*args.child)))
    return
  from common import markdown_table
  code = os.environ.get("PYTHONPATH", str(REPO)).split(os.pathsep)[0]
  rows = []
  for size in args.sizes.split(","):
    r = _child(size, args.tile, code)
    print(json.dumps(r), file=sys.stderr, flush=True)
    rows.append((code, r["size"], "failed: " + r["error"], "", "",
                 "") if "error" in r else (code, r["size"], f"{r['copy_mib']:.0f}",
                                           f"{r['traced_mib']:.0f}", f"{r['copies']:.2f}",
                                           f"{r['rss_rise_mib']:.0f}"))
  print(
      markdown_table([
          "code", "output", "float32 copy (MiB)", "NumPy peak (MiB)", "NumPy peak (copies)",
          "peak RSS rise (MiB)"
      ], rows))


if __name__ == "__main__":
  main()
