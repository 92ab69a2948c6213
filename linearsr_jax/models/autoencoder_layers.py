"""The DC-AE's building blocks, as torch lays them out: convolutions, linears, norms and
activations with diffusers' parameter names and layouts (see models/autoencoder.py)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from linearsr_jax.models.layers import torch_linear_init

Dtype = Any

# torch.nn defaults: GELU is the exact erf form.
ACTIVATIONS = {
    "silu": nn.silu,
    "swish": nn.silu,
    "relu": nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}


def activation(name: str | None):
  return (lambda x: x) if name is None else ACTIVATIONS[name.lower()]


def pixel_unshuffle(x, r: int):
  """torch.nn.functional.pixel_unshuffle in NHWC: channel c*r*r + i*r + j <- pixel (i, j)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // r, r, w // r, r, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // r, w // r, c * r * r)


def pixel_shuffle(x, r: int):
  """torch.nn.functional.pixel_shuffle in NHWC, the exact inverse of pixel_unshuffle."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, c // (r * r), r, r)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


def depthwise_conv(x, kernel, bias=None):
  """k×k depthwise conv, 'same' zero padding, NHWC; kernel [k, k, C].

  k² shifted multiply-adds: XLA:CPU runs feature_group_count=C convolutions an order of
  magnitude slower (measured in bench/autoencoder.py), and this fuses as well elsewhere.
  """
  k = kernel.shape[0]
  h, w = x.shape[1], x.shape[2]
  p = k // 2
  padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = jnp.zeros_like(x) if bias is None else bias
  for dy in range(k):
    for dx in range(k):
      out = out + padded[:, dy:dy + h, dx:dx + w, :] * kernel[dy, dx]
  return out


class Conv(nn.Module):
  """torch.nn.Conv2d(k, stride, padding=k//2) in NHWC; kernel [k, k, in, out]."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, cin = self.kernel_size, x.shape[-1]
    fan_in = cin * k * k
    kernel = self.param("kernel", torch_linear_init(fan_in), (k, k, cin, self.features),
                        jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if k == 1 and self.stride == 1:
      y = jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0])
    else:
      p = k // 2
      y = jax.lax.conv_general_dilated(x, kernel, (self.stride,) * 2, ((p, p), (p, p)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      bias = self.param("bias", torch_linear_init(fan_in), (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class Linear(nn.Module):
  """torch.nn.Linear without bias over the channel axis; kernel [in, out]."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel = self.param("kernel", torch_linear_init(cin), (cin, self.features), jnp.float32)
    return jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype))


class DepthwiseConv(nn.Module):
  """torch.nn.Conv2d(C, C, k, padding=k//2, groups=C)."""
  kernel_size: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, c = self.kernel_size, x.shape[-1]
    kernel = self.param("depthwise_kernel", torch_linear_init(k * k), (k, k, c), jnp.float32)
    bias = (self.param("bias", torch_linear_init(k * k),
                       (c,), jnp.float32) if self.use_bias else None)
    return depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype),
                          None if bias is None else bias.astype(self.dtype))


class GroupedPointwise(nn.Module):
  """torch.nn.Conv2d(C, C, 1, groups=G, bias=False): a block-diagonal matmul; kernel [G, d, d]."""
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    d = c // self.groups
    kernel = self.param("grouped_kernel", torch_linear_init(d), (self.groups, d, d), jnp.float32)
    xg = x.reshape(*x.shape[:-1], self.groups, d).astype(self.dtype)
    return jnp.einsum("...gi,gio->...go", xg, kernel.astype(self.dtype)).reshape(x.shape)


def _affine_params(norm: nn.Module, channels: int):
  """A torch norm's elementwise affine: `weight` (ones) and `bias` (zeros), float32."""
  return (norm.param("weight", nn.initializers.ones, (channels,), jnp.float32),
          norm.param("bias", nn.initializers.zeros, (channels,), jnp.float32))


class RMSNorm(nn.Module):
  """diffusers RMSNorm(eps, elementwise_affine=True, bias=True) over channels, float32 math."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    weight, bias = _affine_params(self, c)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
    return (y * weight + bias).astype(x.dtype)


class BatchNorm(nn.Module):
  """torch BatchNorm2d in eval mode (running statistics); the autoencoder is never trained here."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    weight, bias = _affine_params(self, c)
    mean = self.param("running_mean", nn.initializers.zeros, (c,), jnp.float32)
    var = self.param("running_var", nn.initializers.ones, (c,), jnp.float32)
    y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.eps) * weight + bias
    return y.astype(x.dtype)


def norm_layer(norm_type: str, name: str):
  return RMSNorm(name=name) if norm_type == "rms_norm" else BatchNorm(name=name)
