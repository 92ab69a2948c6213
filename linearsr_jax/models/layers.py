"""Building blocks shared by the transformer: dense layers with logical axes, norms, Mix-FFN.

Params are float32; `dtype` is the compute dtype. Norms always compute in float32.
"""

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def logical(init, names: Sequence[str | None]):
  """An initializer that carries logical axis names, for sharding rules to map to the mesh."""
  return nn.with_logical_partitioning(init, tuple(names))


def torch_linear_init(fan_in: int):
  """PyTorch's default nn.Linear / nn.Conv2d init (uniform ±1/sqrt(fan_in)), for kernels and biases.

  Keeps freshly initialised models statistically like the reference implementation.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Dense(nn.Module):
  """y = x @ kernel + bias, kernel [in, out] with logical axes `axes`.

  The matmul runs in `dtype`, but the kernel's and the bias's gradients are float32 sums (see
  `_matmul`), so data parallelism reduces them across chips in float32.
  """
  features: int
  axes: tuple[str | None, str | None]
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Any = None  # default: PyTorch's, for both kernel and bias
  bias_init: Any = None
  # All-gather the `dtype` kernel over its FSDP axis ('embed') explicitly. For layers of a
  # rematerialised block that see every token: the re-forward and the backward then share one
  # gather, where XLA otherwise gathers again for the backward. Not for layers that see a few
  # tokens (XLA gathers those activations instead), nor without remat (the gathered kernels of
  # every block would be kept for the backward).
  gather: bool = False

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    init = self.kernel_init or torch_linear_init(fan_in)
    kernel = self.param("kernel", logical(init, self.axes), (fan_in, self.features), jnp.float32)
    gathered = tuple(None if a == "embed" else a for a in self.axes) if self.gather else None
    y = _matmul(x.astype(self.dtype), kernel, jnp.dtype(self.dtype), gathered)
    if self.use_bias:
      bias_init = self.bias_init or torch_linear_init(fan_in)
      bias = self.param("bias", logical(bias_init, self.axes[1:]), (self.features,), jnp.float32)
      # Added in float32, so its gradient, a sum over the batch, is a float32 sum too.
      y = (y + bias).astype(self.dtype)
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul(x, kernel, dtype, gathered):
  """x @ kernel.astype(dtype), with the kernel's gradient accumulated and returned in float32.

  Autodiff of the cast would give the gradient in `dtype`: a bfloat16 partial sum per chip,
  reduce-scattered across chips in bfloat16. Here the weight-gradient matmul outputs float32
  (the MXU accumulates in it anyway), and the cross-chip reduction is float32. `gathered`:
  the logical axes to constrain the cast kernel to (see Dense.gather), or None.
  """
  return _matmul_fwd(x, kernel, dtype, gathered)[0]


def _matmul_fwd(x, kernel, dtype, gathered):
  k = kernel.astype(dtype)
  if gathered is not None:
    k = nn.with_logical_constraint(k, gathered)
  return jnp.einsum("...i,io->...o", x, k), (x, k)


def _matmul_bwd(dtype, gathered, residuals, g):
  x, k = residuals
  return (jnp.einsum("...o,io->...i", g,
                     k), jnp.einsum("...i,...o->io", x, g, preferred_element_type=jnp.float32))


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def layer_norm(x, eps: float = 1e-6):
  """LayerNorm without affine, in float32 (AdaLN supplies scale and shift)."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(var + eps)


class RMSNorm(nn.Module):
  """RMSNorm with a learned scale (diffusers' `RMSNorm(elementwise_affine=True)`), float32 math."""
  eps: float = 1e-5
  axis_name: str | None = "embed"

  @nn.compact
  def __call__(self, x):
    scale = self.param("weight", logical(nn.initializers.ones, (self.axis_name,)), (x.shape[-1],),
                       jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
    return (y * scale).astype(x.dtype)


def depthwise_conv3x3(x, kernel, bias, kind: str = "shifts"):
  """3×3 depthwise conv, 'same' zero padding, NHWC; kernel [3, 3, C]. The same sum two ways
  (DEPTHWISE): "shifts", nine shifted multiply-adds: XLA:CPU runs grouped convolutions
  (feature_group_count=C) an order of magnitude slower; "grouped", one grouped convolution:
  XLA:TPU runs the shifts' backward as passes over nine shifted copies of the activation (a
  third of a SANA block's bytes, `linearsr compile`), the convolution's as one.
  """
  if kind == "grouped":
    c = x.shape[-1]
    y = jax.lax.conv_general_dilated(x, kernel.reshape(3, 3, 1, c), (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=c)
    return y + bias
  h, w = x.shape[1], x.shape[2]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = bias
  for dy in range(3):
    for dx in range(3):
      out = out + padded[:, dy:dy + h, dx:dx + w, :] * kernel[dy, dx]
  return out


DEPTHWISE = ("shifts", "grouped")


class MixFFN(nn.Module):
  """SANA's GLUMBConv: 1×1 D→2H, SiLU, depthwise 3×3, value·SiLU(gate), 1×1 H→D (no bias)."""
  hidden: int
  dtype: Dtype = jnp.float32
  gather: bool = False  # Dense.gather for both 1×1 convs
  depthwise: str = "shifts"  # depthwise_conv3x3's kind

  @nn.compact
  def __call__(self, x, grid_hw: tuple[int, int]):
    b, n, d = x.shape
    h, w = grid_hw
    y = Dense(2 * self.hidden, ("embed", "mlp"), dtype=self.dtype, gather=self.gather,
              name="conv_inverted")(x)
    y = nn.silu(y).reshape(b, h, w, 2 * self.hidden)
    y = nn.with_logical_constraint(y, ("activation_batch", None, None, "activation_mlp"))
    kernel = self.param("conv_depth_kernel", logical(torch_linear_init(9), (None, None, "mlp")),
                        (3, 3, 2 * self.hidden), jnp.float32)
    bias = self.param("conv_depth_bias", logical(torch_linear_init(9), ("mlp",)),
                      (2 * self.hidden,), jnp.float32)
    y = depthwise_conv3x3(y, kernel.astype(self.dtype), bias.astype(self.dtype), self.depthwise)
    value, gate = jnp.split(y.reshape(b, n, 2 * self.hidden), 2, axis=-1)
    y = value * nn.silu(gate)
    return Dense(d, ("mlp", "embed"), use_bias=False, dtype=self.dtype, gather=self.gather,
                 name="conv_point")(y)


def timestep_sinusoid(t, dim: int = 256, max_period: float = 10000.0):
  """Sinusoidal timestep features as [cos | sin] (diffusers' flip_sin_to_cos=True, shift 0)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
