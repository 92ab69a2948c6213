"""Test set-up: 8 fake CPU devices for mesh tests, float32 matmuls at full precision."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The tests and the CLI runs they start build the same small configs' steps again and again:
# one compilation cache directory for the whole session, made by the first process (the xdist
# controller, whose environment its workers and every CLI run inherit) and removed by it at the
# end, lets every compile after the first load XLA's executable from disk (a second tiny
# two-stage run in one process: 16 s of CPU with it, 83 s without). No size limit: a limit
# turns on JAX's eviction, which lists and reads the whole directory on every write (thousands
# of entries: it slowed the suite down), and without it there is no lock either; a read that
# meets an entry still being written fails its decompression, and JAX then warns and compiles.
# TPU / GPU AOT compiles are written but never read back (a compile-only client cannot load an
# executable: JAX warns and compiles again).
COMPILATION_CACHE_VARIABLES = {
    "JAX_COMPILATION_CACHE_MAX_SIZE": "-1", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"
}
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="linearsr_jax_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
for _name, _value in COMPILATION_CACHE_VARIABLES.items():
  os.environ.setdefault(_name, _value)

import jax  # noqa: E402
from jax._src import compiler as _jax_compiler  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def _cpu_code_unoptimised(get_compile_options):
  """XLA:CPU programs compiled here without LLVM's optimisations, as train_runs.xla_flags gives
  the training processes: the suite compiles thousands of small programs that run a few times
  each. Through the compile options of CPU compiles alone, not XLA_FLAGS, which libtpu and
  XLA:GPU read too: the TPU / GPU compile tests must compile the programs users get. XLA's HLO
  passes are unchanged, and LLVM does not reorder float arithmetic at any level (no fast-math)."""

  def compile_options(*args, backend=None, **kwargs):
    options = get_compile_options(*args, backend=backend, **kwargs)
    if backend is not None and backend.platform == "cpu":
      options.executable_build_options.debug_options.xla_backend_optimization_level = 0
    return options

  return compile_options


# jax's own compile path looks the function up on the module at each compile.
_jax_compiler.get_compile_options = _cpu_code_unoptimised(_jax_compiler.get_compile_options)

# The files that take minutes, longest first (a suite run on 2 cores, 2026-12-04). xdist hands
# whole files to its workers in collection order, which is alphabetical: a long file collected
# late (test_gcs.py, train/) would run alone at the end while the other worker idles. Starting
# the longest first (the longest-processing-time rule) lets the short files fill in around them.
LONGEST_FILES = [
    "aot/test_compile.py", "test_gcs.py", "test_demo.py", "data/test_precomputed_cond.py",
    "train/test_training.py", "aot/test_compile_gpu.py", "train/test_init_from.py",
    "train/test_distill.py", "train/test_run_lock.py", "train/test_kills.py",
    "data/test_latent_crops.py", "models/test_dit_sr.py", "train/test_guard_resume.py",
    "test_full_disk.py", "diffusion/test_experts.py"
]
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
  missing = [name for name in LONGEST_FILES if not (TESTS / name).is_file()]
  assert not missing, f"conftest.LONGEST_FILES names files that are gone: {missing}"
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  # A stable sort: the order within each file, and of the other files, stays.
  items.sort(key=lambda item: rank.get(Path(item.path).relative_to(TESTS).as_posix(), len(rank)))


@pytest.fixture(scope="session")
def photo_pairs(tmp_path_factory) -> Path:
  """LR/ and HR/ folders of two photographs in a benchmark's layout (the same name in both):
  the 192×192 centre of scikit-image's chelsea and coffee (public domain, shipped inside the
  scikit-image package) and its bicubic ×4 reduction by Pillow. Nothing is read from beside
  the checkout; the real benchmarks are the benches' (bench/bicubic_baselines.py)."""
  import skimage.data
  from PIL import Image

  root = tmp_path_factory.mktemp("photo_pairs")
  for kind in ("LR", "HR"):
    (root / kind).mkdir()
  for name in ("chelsea", "coffee"):
    photo = getattr(skimage.data, name)()
    top, left = (photo.shape[0] - 192) // 2, (photo.shape[1] - 192) // 2
    hr = Image.fromarray(photo[top:top + 192, left:left + 192])
    hr.save(root / "HR" / f"{name}.png")
    hr.resize((48, 48), Image.Resampling.BICUBIC).save(root / "LR" / f"{name}.png")
  return root
