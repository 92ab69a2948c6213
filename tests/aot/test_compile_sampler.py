"""`linearsr compile --sampler_image N`: the sampler for one N×N image compiled for one chip of a
TPU slice (libtpu) and of GPU nodes (the CUDA plugin), on this CPU.

The forward's FLOPs are checked against the float64 matmul count of compile_helpers.py, and the
whole sampling's against that count times the steps and the guidance's two passes: XLA counts
the sampler's loop over steps once, so a report that did not count it in full would be a
third of it here.
"""

import json

import pytest

from compile_helpers import NARROW, analytic_forward_flops
from linearsr_jax.commands.cli import main

GIB = 1024**3
STEPS, GUIDANCE, IMAGE = 3, 4.5, 256
# NARROW in pixel space ×8: a 32² latent grid (1024 tokens) from 256² images, 64² LR.
FORWARD = analytic_forward_flops(depth=1, width=128, heads=4, tokens=(IMAGE // 8)**2, caption=32,
                                 stem_width=16, lr_side=IMAGE // 4)[0]


@pytest.mark.slow
@pytest.mark.parametrize("topology, hbm_gib, peak", [("v5e-1", 16, 197), ("h100-8", 80, 989)])
def test_sampler_of_one_image_counts_every_step_and_both_guidance_passes(
    topology, hbm_gib, peak, tmp_path, capsys):
  out = tmp_path / "sampler.json"
  narrow = [f"--config.{k}={v}" for k, v in NARROW.items()]
  code = main([
      "compile", "--config", "configs/sana600m_x4.py", "--topology", topology, "--sampler_image",
      str(IMAGE), "--out",
      str(out), *narrow, f"--config.diffusion.sampler.steps={STEPS}",
      f"--config.diffusion.sampler.guidance_scale={GUIDANCE}"
  ])
  printed = capsys.readouterr()
  assert code == 0, printed.err[-2000:]
  r = json.loads(out.read_text())
  assert r["chips"] == 1 and r["hbm_bytes"] == hbm_gib * GIB and r["evaluations"] == STEPS
  forward, sampling = r["forward"], r["sampling"]
  # Guidance: the conditional and null passes, one batch of two samples.
  assert forward["flops"] == pytest.approx(2 * FORWARD, rel=0.10)
  assert sampling["flops"] == pytest.approx(STEPS * 2 * FORWARD, rel=0.10)
  for part in (forward, sampling):
    assert 0 < part["memory"]["total"] < hbm_gib * GIB and part["bytes_accessed"] > 0
    assert part["roofline"]["seconds"] >= part["flops"] / (peak * 1e12)
  assert r["fits"] and "paper 36 ms" in printed.out and "paper 830 ms" in printed.out


def test_a_sampler_image_that_is_not_a_positive_size_is_one_line_and_exit_2(capsys):
  code = main([
      "compile", "--config", "configs/sana600m_x4.py", "--topology", "v5e-1", "--sampler_image", "0"
  ])
  err = capsys.readouterr().err
  assert code == 2, err
  lines = [l for l in err.splitlines() if l.startswith("linearsr: error:")]
  assert len(lines) == 1 and "--sampler_image 0" in lines[0], err
