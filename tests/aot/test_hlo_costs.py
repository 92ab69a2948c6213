"""Where a compiled program's FLOPs and bytes go (aot/hlo_costs.py): each kernel costed from the
optimised HLO's shapes, checked against counts written out from the layers' sizes and against
XLA's own totals."""

import jax
import jax.numpy as jnp
import pytest

from linearsr_jax.aot import hlo_costs

M, K, N = 256, 128, 512  # tokens, width, hidden


def _two_dense_layers_and_a_depthwise_conv(x, w1, w2, kernel):
  y = jnp.tanh(x @ w1) @ w2
  image = y.reshape(1, 16, 16, K)
  z = jax.lax.conv_general_dilated(image, kernel, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=K)
  return jnp.sum(z**2)


def _compiled_on_cpu(fn, *shapes):
  args = [
      jax.ShapeDtypeStruct(s, jnp.float32,
                           sharding=jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0]))
      for s in shapes
  ]
  compiled = jax.jit(fn).lower(*args).compile()
  cost = compiled.cost_analysis()
  return compiled.as_text(), cost[0] if isinstance(cost, (list, tuple)) else cost


def test_dense_layers_bytes_and_flops_match_an_analytic_count():
  """The gradient of two float32 dense layers (x·W1, tanh, ·W2) and a depthwise convolution
  with respect to the weights: five matmuls (two forward; dH, dW2 and dW1), each reading its two
  operands and writing its product once."""
  grad = jax.grad(_two_dense_layers_and_a_depthwise_conv, argnums=(1, 2))
  text, xla = _compiled_on_cpu(grad, (M, K), (K, N), (N, K), (3, 3, 1, K))
  kinds = hlo_costs.by_kind(text)
  assert kinds["matmul"]["flops"] == pytest.approx(5 * 2 * M * K * N, rel=1e-6)
  assert kinds["matmul"]["bytes"] == pytest.approx(5 * 4 * (M * K + K * N + M * N), rel=0.01)
  # The depthwise convolution: 9 taps a pixel, fewer on the border ('SAME' padding's zeros), in
  # the forward and in the kernel's gradient.
  taps = (16 * 3 - 2)**2  # (output, tap) pairs on the image that read a pixel, per channel
  assert kinds["convolution"]["flops"] == pytest.approx(2 * 2 * taps * K, rel=0.05)
  assert kinds["elementwise"]["bytes"] > 0 and kinds["custom"] == {
      "flops": 0, "bytes": 0, "on_chip_bytes": 0
  }
  # The kinds add up to what XLA counts for the whole program.
  assert sum(k["flops"] for k in kinds.values()) == pytest.approx(xla["flops"], rel=0.01)
  assert sum(k["bytes"] for k in kinds.values()) == pytest.approx(xla["bytes accessed"], rel=0.01)


def test_tpu_layouts_pad_the_minor_dimensions_to_their_tiles():
  assert hlo_costs.array_bytes("bf16", "4,256,16", "2,1,0:T(8,128)(2,1)") == 2 * 4 * 256 * 128
  assert hlo_costs.array_bytes("f32", "3,640", "1,0:T(1,128)S(1)") == 4 * 3 * 640
  # Minor to major: dimension 0 (5) is the minor one, padded to 128; dimension 1 to 136.
  assert hlo_costs.array_bytes("f32", "5,130", "0,1:T(8,128)") == 4 * 128 * 136
  assert hlo_costs.array_bytes("f32", "5,130", None) == 4 * 5 * 130


def test_a_custom_call_declaring_its_cost_counts_it_and_its_operands():
  text = """ENTRY %main (x: f32[64,3], y: f32[64,5]) -> f32[64,7] {
  %x = f32[64,3]{1,0} parameter(0)
  %y = f32[64,5]{1,0} parameter(1)
  ROOT %k = f32[64,7]{1,0} custom-call(%x, %y), custom_call_target="tpu_custom_call", """ + \
      """backend_config={"cost_estimate":{"flops":"12345","transcendentals":"0"}}
}"""
  (kernel,) = hlo_costs.kernels(text)
  assert (kernel.kind, kernel.flops, kernel.bytes) == ("custom", 12345, 4 * 64 * (3 + 5 + 7))


@pytest.mark.slow
def test_a_pallas_matmul_compiled_for_tpu_counts_its_flops_from_its_shapes():
  """A Pallas kernel declaring no cost: XLA counts no FLOPs for it; here its shapes are a
  matmul's, 2·M·K·N."""
  from jax.experimental import pallas as pl

  from linearsr_jax.aot import tpu_pods

  def matmul_kernel(x_ref, y_ref, o_ref):
    # bf16 on the MXU (the suite's default precision, 'highest', is float32's, which Mosaic
    # refuses for bf16 operands).
    o_ref[...] = jnp.dot(x_ref[...], y_ref[...], preferred_element_type=jnp.float32,
                         precision=jax.lax.Precision.DEFAULT)

  def matmul(x, y):
    return pl.pallas_call(matmul_kernel, out_shape=jax.ShapeDtypeStruct((M, N), jnp.float32))(x, y)

  device = tpu_pods.pod_devices(tpu_pods.parse_pod("v5e-1"))[0]
  shape = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=jax.sharding.
                                          SingleDeviceSharding(device))
  text = jax.jit(matmul).lower(shape(M, K), shape(K, N)).compile().as_text()
  (kernel,) = [k for k in hlo_costs.kernels(text) if k.kind == "custom"]
  assert kernel.flops == 2 * M * K * N
  assert kernel.bytes == 2 * (M * K + K * N) + 4 * M * N


def test_in_place_updates_count_what_they_write_and_on_chip_bytes_stand_apart():
  """A fusion writing a [1, 128] row into a [64, 128] buffer in place (its result aliases the
  buffer) reads and writes the row, not the buffer; an async copy into VMEM (`S(1)`) counts at
  its start and at its done, its VMEM side apart."""
  text = """%update (p0: f32[64,128], p1: f32[1,128], p2: s32[]) -> f32[64,128] {
  %p0 = f32[64,128]{1,0:T(8,128)} parameter(0)
  %p1 = f32[1,128]{1,0:T(1,128)} parameter(1)
  %p2 = s32[] parameter(2)
  %z = s32[] constant(0)
  ROOT %d = f32[64,128]{1,0:T(8,128)} dynamic-update-slice(%p0, %p1, %p2, %z)
}

ENTRY %main (buffer: f32[64,128], row: f32[1,128], i: s32[]) -> f32[64,128] {
  %buffer = f32[64,128]{1,0:T(8,128)} parameter(0)
  %row = f32[1,128]{1,0:T(1,128)} parameter(1)
  %i = s32[] parameter(2)
  %start = (f32[1,128]{1,0:T(1,128)S(1)}, f32[1,128]{1,0:T(1,128)}, u32[]{:S(2)}) copy-start(%row)
  %done = f32[1,128]{1,0:T(1,128)S(1)} copy-done(%start)
  ROOT %f = f32[64,128]{1,0:T(8,128)} fusion(%buffer, %done, %i), kind=kLoop, """ + \
      """output_to_operand_aliasing={{}: (0, {})}, calls=%update
}"""
  start, done, update = hlo_costs.kernels(text)
  row = 4 * 128
  assert (update.kind, update.bytes, update.on_chip_bytes) == ("elementwise", row + 4, row)
  assert (start.kind, start.bytes, start.on_chip_bytes) == ("copy", 2 * row, row)
  assert (done.kind, done.bytes, done.on_chip_bytes) == ("copy", 2 * row, 2 * row)
