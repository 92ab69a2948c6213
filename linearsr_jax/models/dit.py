"""The LinearSR transformer: SANA's linear-attention DiT with the LR image concatenated in.

    velocity = DiT(cfg).apply({"params": p}, x_t, t, lr, cond, cond_mask)

x_t [B, H, W, C] latents (NHWC), t [B] in model units (flow σ times timestep_scale),
lr [B, h, w, 3] in [-1, 1] (ignored when cfg.lr_channels == 0), cond [B, L, caption_channels],
cond_mask [B, L] bool. Parameter names follow diffusers' SanaTransformer2DModel so that import
and export are renames plus transposes.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from linearsr_jax.models.attention import Attention
from linearsr_jax.models.layers import (Dense, MixFFN, RMSNorm, layer_norm, logical,
                                        timestep_sinusoid)

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Architecture and numerics; field names match the `model` section of configs/*.py."""
  depth: int = 2
  hidden: int = 64
  heads: int = 2  # self-attention heads (head_dim = hidden // heads)
  cross_heads: int = 2
  cross_head_dim: int = 32
  caption_channels: int = 64
  latent_channels: int = 48
  patch_size: int = 1
  mlp_ratio: float = 2.5
  attention: str = "linear"  # "linear" (SANA) | "softmax" (ablations, scaling bench)
  qk_norm: str | None = None  # None | "rms_norm_across_heads"
  attention_bias: bool = False  # bias on the self-attention q/k/v projections
  lr_channels: int = 16  # channels of E_conv(LR) concatenated with x_t; 0 = none
  lr_stem_convs: int = 1  # stride-2 convs in E_conv: log2(latent factor / scale)
  lr_stem_width: int = 32
  scan_layers: bool = True
  remat: str = "none"  # key of REMAT_POLICIES
  dtype: str = "float32"  # compute dtype (DTYPES); params stay float32
  depthwise: str = "shifts"  # the Mix-FFN's 3×3 depthwise conv (layers.DEPTHWISE)

  @property
  def head_dim(self) -> int:
    return self.hidden // self.heads

  @property
  def ffn_hidden(self) -> int:
    return int(self.mlp_ratio * self.hidden)

  @classmethod
  def from_dict(cls, d) -> "DiTConfig":
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown model config keys: {sorted(unknown)}")
    return cls(**d)


class Block(nn.Module):
  """Self-attention, cross-attention, Mix-FFN, each residual; AdaLN-single modulation."""
  cfg: DiTConfig
  grid_hw: tuple[int, int]

  @nn.compact
  def __call__(self, x, t6, cond, cond_mask):
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    d = cfg.hidden
    gather = cfg.remat != "none"  # see Dense.gather
    table = self.param("scale_shift_table", logical(nn.initializers.normal(d**-0.5),
                                                    (None, "embed")), (6, d), jnp.float32)
    mod = table[None] + t6.reshape(-1, 6, d)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        mod[:, i:i + 1] for i in range(6))

    h = (layer_norm(x) * (1 + scale_msa) + shift_msa).astype(dtype)
    h = Attention(cfg.heads, cfg.head_dim, cfg.attention, cfg.attention_bias, cfg.qk_norm, dtype,
                  gather, name="attn1")(h)
    x = x + gate_msa * h

    h = Attention(cfg.cross_heads, cfg.cross_head_dim, "softmax", True, cfg.qk_norm, dtype, gather,
                  name="attn2")(x.astype(dtype), cond, cond_mask)
    x = x + h

    h = (layer_norm(x) * (1 + scale_mlp) + shift_mlp).astype(dtype)
    h = MixFFN(cfg.ffn_hidden, dtype, gather, cfg.depthwise, name="ff")(h, self.grid_hw)
    x = x + gate_mlp * h
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
    return x.astype(jnp.float32)


class ScanBlock(nn.Module):
  """`Block` with the (carry, xs) signature nn.scan wants."""
  cfg: DiTConfig
  grid_hw: tuple[int, int]

  @nn.compact
  def __call__(self, x, shared):
    return Block(self.cfg, self.grid_hw, name="block")(x, *shared), None


# The stem is a few thousand params on the largest LR grid: replicate it.
STEM_KERNEL_INIT = logical(nn.initializers.lecun_normal(), (None, None, None, None))
STEM_BIAS_INIT = logical(nn.initializers.zeros, (None,))


class LRStem(nn.Module):
  """E_conv: `convs` stride-2 3×3 convs with SiLU, then a 3×3 conv to `out` channels."""
  convs: int
  width: int
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, lr):
    x = lr.astype(self.dtype)
    for i in range(self.convs):
      x = nn.Conv(self.width, (3, 3), (2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                  kernel_init=STEM_KERNEL_INIT, bias_init=STEM_BIAS_INIT, name=f"down_{i}")(x)
      x = nn.silu(x)
    return nn.Conv(self.out, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                   kernel_init=STEM_KERNEL_INIT, bias_init=STEM_BIAS_INIT, name="out")(x)


def patchify(x, p: int):
  """[B, H, W, C] -> [B, H/p, W/p, p·p·C], features ordered (row-in-patch, col-in-patch, C)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def unpatchify(x, p: int, c: int):
  """Inverse of `patchify`."""
  b, hp, wp, _ = x.shape
  x = x.reshape(b, hp, wp, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, hp * p, wp * p, c)


class DiT(nn.Module):
  cfg: DiTConfig

  @nn.compact
  def __call__(self, x_t, t, lr, cond, cond_mask):
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    b, hgt, wid, c = x_t.shape
    p, d = cfg.patch_size, cfg.hidden
    if hgt % p or wid % p:
      raise ValueError(f"latent size {hgt}x{wid} is not divisible by patch size {p}")
    grid_hw = (hgt // p, wid // p)

    x = x_t
    if cfg.lr_channels:
      lr_feat = LRStem(cfg.lr_stem_convs, cfg.lr_stem_width, cfg.lr_channels, dtype,
                       name="lr_stem")(lr)
      if lr_feat.shape[1:3] != x_t.shape[1:3]:
        raise ValueError(f"LR stem maps {lr.shape[1:3]} to {lr_feat.shape[1:3]}, but the latent "
                         f"grid is {x_t.shape[1:3]}: check lr_stem_convs against the scale")
      x = jnp.concatenate([x_t.astype(dtype), lr_feat.astype(dtype)], axis=-1)
    x = patchify(x, p)
    x = Dense(d, (None, "embed"), dtype=dtype, name="patch_embed")(x)
    x = x.reshape(b, grid_hw[0] * grid_hw[1], d).astype(jnp.float32)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))

    t_emb = Dense(d, (None, "embed"), name="time_linear_1")(timestep_sinusoid(t))
    t_emb = Dense(d, ("mlp", "embed"), name="time_linear_2")(nn.silu(t_emb))
    t6 = Dense(6 * d, ("embed", "mlp"), name="time_adaln")(nn.silu(t_emb))

    cond = Dense(d, ("caption", "embed"), dtype=dtype, name="caption_linear_1")(cond)
    cond = Dense(d, ("mlp", "embed"), dtype=dtype,
                 name="caption_linear_2")(nn.gelu(cond, approximate=True))
    cond = RMSNorm(1e-5, name="caption_norm")(cond).astype(dtype)

    shared = (t6, cond, cond_mask)
    policy = REMAT_POLICIES[cfg.remat]
    if cfg.scan_layers:
      block_cls = nn.remat(ScanBlock, policy=policy, prevent_cse=False) if policy else ScanBlock
      stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=nn.broadcast, length=cfg.depth,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, grid_hw, name="blocks")(x, shared)
    else:
      block_cls = nn.remat(Block, policy=policy) if policy else Block
      for i in range(cfg.depth):
        x = block_cls(cfg, grid_hw, name=f"blocks_{i}")(x, *shared)

    table = self.param("scale_shift_table", logical(nn.initializers.normal(d**-0.5),
                                                    (None, "embed")), (2, d), jnp.float32)
    shift, scale = jnp.split(table[None] + t_emb[:, None], 2, axis=1)
    x = (layer_norm(x) * (1 + scale) + shift).astype(dtype)
    # Zero-initialised output, as DiT / PixArt / SANA train it: a fresh model predicts zero
    # velocity, so with the LR-anchored flow it starts out returning the upsampled LR image.
    x = Dense(p * p * c, ("embed", None), dtype=dtype, kernel_init=nn.initializers.zeros,
              bias_init=nn.initializers.zeros, name="proj_out")(x)
    x = unpatchify(x.reshape(b, *grid_hw, p * p * c), p, c)
    return x.astype(jnp.float32)


def init_params(cfg: DiTConfig, rng, latent_hw=(8, 8), cond_len=4):
  """Initialises params from example shapes; leaves are logically boxed (see sharding.py)."""
  return DiT(cfg).init(rng, *example_inputs(cfg, 1, latent_hw, cond_len))["params"]


def example_inputs(cfg: DiTConfig, batch, latent_hw, cond_len=4):
  """Zero inputs with consistent shapes: (x_t, t, lr, cond, cond_mask)."""
  h, w = latent_hw
  f = 2**cfg.lr_stem_convs
  return (jnp.zeros((batch, h, w, cfg.latent_channels)), jnp.zeros(
      (batch,)), jnp.zeros(
          (batch, h * f, w * f, 3)), jnp.zeros(
              (batch, cond_len, cfg.caption_channels)), jnp.ones((batch, cond_len), bool))
