"""Test set-up: 8 fake CPU devices for mesh tests, float32 matmuls at full precision."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def realsr() -> Path:
  """The RealSR ×4 test pairs (LR/, HR/) in ../shared beside the checkout."""
  path = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "RealSR"
  if not (path / "LR").is_dir():
    pytest.fail(f"{path} is missing: the tests expect the shared benchmarks beside the checkout")
  return path
