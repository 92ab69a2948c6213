"""A deep model's counts from programs of 1 and 2 unrolled blocks: what one block adds, the rest,
and the whole depth, against counts written out for a model whose block and rest are known."""

import pytest

from linearsr_jax.aot import hlo_stats
from linearsr_jax.commands import cli_compile

BLOCK = {"matmul": (3.0e12, 10e9), "elementwise": (0.1e12, 12e9), "copy": (0.0, 4e9)}
REST = {"matmul": (1.0e12, 2e9), "elementwise": (0.0, 1e9), "copy": (0.0, 0.5e9)}


def program(blocks: int) -> dict:
  """The counted stats of a program of `blocks` unrolled blocks and the rest."""
  kinds = {
      kind: {
          "flops": REST[kind][0] + blocks * BLOCK[kind][0],
          "bytes": REST[kind][1] + blocks * BLOCK[kind][1], "on_chip_bytes": 0.0
      } for kind in BLOCK
  }
  return {
      "flops": sum(k["flops"] for k in kinds.values()),
      "bytes_accessed": sum(k["bytes"] for k in kinds.values()),
      "collectives": {"all-gather": 1e9 * blocks}, "collectives_by_dtype": {}, "by_kind": kinds
  }


def test_one_block_the_rest_and_the_whole_depth_from_two_programs():
  one, two = program(1), program(2)
  split = hlo_stats.block_and_rest(one, two)
  for kind, (flops, size) in BLOCK.items():
    assert split["block"][kind]["flops"] == pytest.approx(flops)
    assert split["block"][kind]["bytes"] == pytest.approx(size)
    assert split["rest"][kind]["bytes"] == pytest.approx(REST[kind][1])
  whole = hlo_stats.extrapolated(one, two, 28)
  assert whole["by_kind"]["copy"]["bytes"] == pytest.approx(0.5e9 + 28 * 4e9)
  assert whole["flops"] == pytest.approx(program(28)["flops"])
  assert whole["collectives"]["all-gather"] == pytest.approx(28e9)
  lines = cli_compile._breakdown_lines(dict(whole, by_kind_per_block=split))
  assert "whole | one block | the rest" in lines[0]
  # the kinds by bytes, largest first: elementwise 12 GB a block, of 28 × 12 + 1 in all
  assert lines[1].split() == [
      "elementwise", "2.800", f"{337e9 / 2**30:.2f}", "|", "0.100", f"{12e9 / 2**30:.2f}", "|",
      "0.000", f"{1e9 / 2**30:.2f}"
  ]
