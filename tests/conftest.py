"""Test set-up: 8 fake CPU devices for mesh tests, float32 matmuls at full precision."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# Many tests build the same small configs' steps in this process; each run's new closures make
# jax.jit trace again, but XLA's compile is then found on disk. One directory per process (the
# xdist workers would race on a shared one); TPU / GPU AOT compiles are never cached.
_compilation_cache = tempfile.mkdtemp(prefix="linearsr_jax_cache_")
atexit.register(shutil.rmtree, _compilation_cache, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _compilation_cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def realsr() -> Path:
  """The RealSR ×4 test pairs (LR/, HR/) in ../shared beside the checkout."""
  path = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "RealSR"
  if not (path / "LR").is_dir():
    pytest.fail(f"{path} is missing: the tests expect the shared benchmarks beside the checkout")
  return path
