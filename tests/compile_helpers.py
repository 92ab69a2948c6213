"""Configs and an analytic FLOP count shared by the `linearsr compile` tests (TPU and GPU)."""

# sana600m_x4 at SANA-600M width, 2 scanned blocks, in a pixel-unshuffle ×8 space (192 channels,
# a 16×16 grid from 128 px crops) so that the count below is the DiT's alone.
SMALL = [
    "--config.model.depth=2", "--config.latent.kind=pixel", "--config.latent.factor=8",
    "--config.model.latent_channels=192", "--config.model.lr_stem_convs=1",
    "--config.data.crop_size=128", "--config.data.eval.crop_size=128",
    "--config.data.eval.batch_size=2", "--config.train.eval_steps=1", "--config.data.batch_size=16",
    "--config.stage_order=pretrain"
]

# The same at a quarter of SANA-600M's width (head size 32 and the cross-attention's width equal
# to the model's, as in SANA): what the reports are checked on. The compiler's work falls with
# the width (a TPU report at full width: 320 s of CPU, at this one 156 s).
QUARTER_WIDTH = dict(width=288, heads=9)
QUARTER = [
    *SMALL, "--config.model.hidden=288", "--config.model.heads=9", "--config.model.cross_heads=4",
    "--config.model.cross_head_dim=72"
]


def analytic_forward_flops(depth=2, width=1152, heads=36, mlp_ratio=2.5, tokens=256, cond_tokens=64,
                           caption=2304, in_channels=192 + 32, out_channels=192, stem_width=128,
                           lr_side=32):
  """(matmul FLOPs of one sample's forward, of which one block's)."""
  d, h, head = width, int(mlp_ratio * width), width // heads
  block = (
      2 * tokens * d * 3 * d  # q, k, v
      + heads * 4 * tokens * head * (head + 1)  # kᵀ[v 1] and q·(kᵀ[v 1])
      + 2 * tokens * d * d  # self-attention out
      + 2 * tokens * d * d + 2 * 2 * cond_tokens * d * d  # cross q; k, v of the condition
      + 2 * 2 * tokens * cond_tokens * d  # scores and their weighted sum
      + 2 * tokens * d * d  # cross out
      + 2 * tokens * d * 2 * h + 2 * 9 * tokens * 2 * h + 2 * tokens * h * d)  # Mix-FFN
  rest = (
      2 * tokens * in_channels * d + 2 * tokens * d * out_channels  # patch in / out
      + 2 * cond_tokens * caption * d + 2 * cond_tokens * d * d  # caption MLP
      + 2 * 256 * d + 2 * d * d + 2 * d * 6 * d  # timestep MLPs
      + 2 * (lr_side // 2)**2 * 9 * 3 * stem_width  # LR stem
      + 2 * (lr_side // 2)**2 * 9 * stem_width * 32)
  return depth * block + rest, block


def analytic_step_flops(batch, depth=2, **sizes):
  """Matmul FLOPs of one train step: 3 forwards (forward, and the backward's two products)
  plus one more forward of the blocks, which full remat recomputes."""
  forward, block = analytic_forward_flops(depth, **sizes)
  return batch * (3 * forward + depth * block)


# One narrow unscanned block: for tests of the search and of exit codes, not of SANA's width.
NARROW = {
    "model.depth": 1, "model.scan_layers": False, "model.hidden": 128, "model.heads": 4,
    "model.cross_heads": 4, "model.cross_head_dim": 32, "model.caption_channels": 32,
    "model.lr_stem_width": 16, "latent.kind": "pixel", "latent.factor": 8,
    "model.latent_channels": 192, "model.lr_stem_convs": 1, "data.crop_size": 128,
    "data.eval.crop_size": 128, "data.eval.batch_size": 2, "train.eval_steps": 1
}
# NARROW's sizes for analytic_forward_flops.
NARROW_WIDTH = dict(width=128, heads=4, caption=32, stem_width=16)
