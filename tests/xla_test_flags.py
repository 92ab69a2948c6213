"""XLA flags of every test process and of the `linearsr` runs they start.

Most of a test's time goes into compiling programs that then run a few steps. Without LLVM's
optimisations an XLA:CPU compile takes about 40 % less CPU (tests/models/test_dit_sr.py with
tests/train/test_validation.py: 150 s -> 81 s user) and a long run about 10 % more (the demo's
test: 369 s -> 410 s), on a 2-core AMD EPYC, 2026-12-04. Results may differ in the last bits,
which no test depends on: they compare against references within tolerances, or two runs made
alike. `make demo` and the benches run with XLA's defaults, as users do.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def with_device_count(count: int) -> str:
  """XLA_FLAGS for a process that sees `count` fake CPU devices."""
  return f"{FAST_COMPILE} --xla_force_host_platform_device_count={count}"
